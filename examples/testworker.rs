//! A worker daemon built to misbehave on request: the fixture of the
//! integration tests (`tests/it/health.rs`). It is not a template; copy
//! `demodaemon.rs` to start a real daemon.
//!
//! Each worker waits `job_interval` (idle), then runs one job that keeps it
//! busy for `busy_ms`, reporting both through `ctx.begin_job()` and
//! `Step::Worked`, so heartbeats, job counts and busy/idle reach the
//! scoreboard exactly as in a real daemon. The `[app]` knobs make it fail
//! in the ways the supervisor must handle:
//!
//! | key | effect |
//! |---|---|
//! | `job_interval = "10ms"` | idle gap before each job |
//! | `busy_ms = 0` | how long each job keeps the worker busy |
//! | `idle_after_jobs = N` | after N jobs, stay idle for good |
//! | `hang_after_jobs = N` | after N jobs, block in `run` without heartbeats (until a stop request) |
//! | `leak_per_job = BYTES` | allocate, touch and keep this much memory per job |
//! | `crash_after = N` | after N jobs (0: at once), fail the way `crash_with` says |
//! | `crash_with = "exit"` | `exit` (status 7), `panic`, or `error` (return an error from `run`) |
//! | `log_env = ["HOME"]` | in `init`, log `env NAME=VALUE` for each of these variables |
//! | `init_sleep = "0s"` | `init` blocks this long first, without heartbeats (a connect to a database that is down) |
//! | `hook_file = "PATH"` | the parent's `on_start` hook opens PATH, inheritable (no close-on-exec), and keeps it open |
//! | `fail_init_with = "text"` | `init` fails with this message |
//! | `init_block_read = "5s"` | `init` first blocks in a socket read with this read timeout (a connect to a database that is down), failing on any other error |
//! | `finish_job = true` | a job in hand is finished even after a stop request (heartbeats go on) |
//! | `log_jobs = true` | log `job N done by build ID` after each job (the upgrade tests) |
//! | `block_read = "5s"` | each `run` blocks in a socket read with this read timeout (`SO_RCVTIMEO`), as a Redis or HTTP client does, and fails on any other error (`EINTR` included) |
//!
//! Its build id (`status`, the log, metrics) is compiled into the binary
//! as [`BUILD`]: the upgrade tests make a *different executable* by copying
//! the binary and rewriting those bytes, as a rebuild with another id
//! would, without a second compile. A build id that starts with
//! `failinit` makes every worker's `init` fail (a broken release).
//!
//! ```text
//! cargo run --example testworker -- --no-daemon -w 2
//! ```

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::process::ExitCode;
use std::time::Duration;

use rookery::{BoxError, Context, Step, Worker};
use serde::Deserialize;
use tracing::info;

/// The build id marker: `TESTBUILD:` and 14 bytes of id (trailing dots are
/// padding), rewritten in copies of the binary by the upgrade tests.
static BUILD: [u8; 24] = *b"TESTBUILD:aaaaaaaaaaaaaa";

/// This binary's build id, read through `black_box` so the compiler
/// cannot fold the bytes into the code that uses them: the bytes in the
/// file are the id.
fn build() -> String {
    let bytes: &[u8; 24] = std::hint::black_box(&BUILD);
    String::from_utf8_lossy(&bytes[10..])
        .trim_end_matches('.')
        .to_string()
}

/// The `[app]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    #[serde(deserialize_with = "duration")]
    job_interval: Duration,
    busy_ms: u64,
    idle_after_jobs: Option<u64>,
    hang_after_jobs: Option<u64>,
    leak_per_job: usize,
    crash_after: Option<u64>,
    crash_with: CrashWith,
    log_env: Vec<String>,
    #[serde(deserialize_with = "duration")]
    init_sleep: Duration,
    hook_file: Option<std::path::PathBuf>,
    fail_init_with: Option<String>,
    #[serde(deserialize_with = "opt_duration")]
    init_block_read: Option<Duration>,
    #[serde(deserialize_with = "opt_duration")]
    block_read: Option<Duration>,
    log_jobs: bool,
    finish_job: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            job_interval: Duration::from_millis(10),
            busy_ms: 0,
            idle_after_jobs: None,
            hang_after_jobs: None,
            leak_per_job: 0,
            crash_after: None,
            crash_with: CrashWith::Exit,
            log_env: Vec::new(),
            init_sleep: Duration::ZERO,
            hook_file: None,
            fail_init_with: None,
            init_block_read: None,
            block_read: None,
            log_jobs: false,
            finish_job: false,
        }
    }
}

/// How `crash_after` fails.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum CrashWith {
    Exit,
    Panic,
    Error,
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// One worker process.
struct TestWorker {
    jobs: u64,
    leaked: Vec<Vec<u8>>,
    /// `block_read`: the socket read from (nothing is ever sent on it) and
    /// its peer, kept open.
    socket: Option<(UnixDatagram, UnixDatagram)>,
}

impl Worker for TestWorker {
    type Settings = Settings;
    type Args = rookery::NoArgs;

    fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        // Blocks like a connect without a timeout: not even a stop request
        // ends it.
        std::thread::sleep(ctx.settings().init_sleep);
        for k in &ctx.settings().log_env {
            let v = std::env::var(k).unwrap_or_else(|_| "(unset)".into());
            info!("env {k}={v}");
        }
        let s = ctx.settings();
        if build().starts_with("failinit") {
            return Err(format!("build {} cannot start its workers", build()).into());
        }
        if let Some(msg) = &s.fail_init_with {
            return Err(msg.clone().into());
        }
        if let Some(timeout) = s.init_block_read {
            let (a, _b) = UnixDatagram::pair()?;
            a.set_read_timeout(Some(timeout))?;
            match a.recv(&mut [0u8; 8]) {
                Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!("connect failed: {e}").into());
                }
                _ => info!("init read timed out"),
            }
        }
        let socket = match s.block_read {
            Some(timeout) => {
                let (a, b) = UnixDatagram::pair()?;
                a.set_read_timeout(Some(timeout))?;
                Some((a, b))
            }
            None => None,
        };
        Ok(TestWorker {
            jobs: 0,
            leaked: Vec::new(),
            socket,
        })
    }

    fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        if let Some((sock, _)) = &self.socket {
            let mut buf = [0u8; 64];
            // Like a queue client: a timeout means "no job", any other
            // error is an error (std does not retry EINTR here).
            return match sock.recv(&mut buf) {
                Ok(_) => Ok(Step::Worked),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    info!("read timed out");
                    Ok(Step::Idle)
                }
                Err(e) => Err(format!("read failed: {e}").into()),
            };
        }
        let s = ctx.settings().clone();
        if s.crash_after.is_some_and(|n| self.jobs >= n) {
            info!("crashing after {} jobs ({:?})", self.jobs, s.crash_with);
            match s.crash_with {
                CrashWith::Exit => std::process::exit(7),
                CrashWith::Panic => panic!("testworker: crash_after reached"),
                CrashWith::Error => return Err("crash_after reached".into()),
            }
        }
        if !ctx.sleep(s.job_interval) {
            return Ok(Step::Idle);
        }
        if s.idle_after_jobs.is_some_and(|n| self.jobs >= n) {
            return Ok(Step::Idle);
        }
        // Labelled, so the parent's lines about a job say which one.
        ctx.begin_job_labeled(&format!("test job {}", self.jobs + 1));
        if s.hang_after_jobs.is_some_and(|n| self.jobs >= n) {
            info!("hanging after {} jobs", self.jobs);
            // In the middle of a job, with no heartbeat from here on; only
            // a stop request ends the wait.
            while ctx.sleep(Duration::from_secs(3600)) {}
            return Ok(Step::Idle);
        }
        if s.leak_per_job > 0 {
            // Touch every page so the memory is resident, not just reserved.
            self.leaked.push(vec![0x5a; s.leak_per_job]);
        }
        if s.busy_ms > 0 {
            // Busy, with heartbeats, until done or asked to stop.
            let end = std::time::Instant::now() + Duration::from_millis(s.busy_ms);
            while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
                ctx.heartbeat();
                let step = left.min(Duration::from_millis(100));
                if s.finish_job {
                    std::thread::sleep(step);
                } else if !ctx.sleep(step) {
                    break;
                }
            }
        }
        self.jobs += 1;
        if s.log_jobs {
            info!("job {} done by build {}", self.jobs, build());
        }
        Ok(Step::Worked)
    }

    fn cleanup(&mut self, _ctx: &mut Context<Self>) {
        info!("cleanup after {} jobs", self.jobs);
    }
}

/// The parent's hooks: `on_start` opens `hook_file`, as a daemon opens a
/// listening socket for its workers to share.
#[derive(Default)]
struct TestHooks {
    kept: Option<std::fs::File>,
}

impl rookery::Hooks for TestHooks {
    fn on_start(&mut self, config: &rookery::Config) -> Result<(), BoxError> {
        if let Some(path) = config.app::<Settings>()?.hook_file {
            let file = std::fs::File::open(path)?;
            // std opens with O_CLOEXEC; a descriptor meant for workers to
            // inherit (across exec too) has it cleared.
            nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
            self.kept = Some(file);
        }
        Ok(())
    }
}

/// Options that clash with rookery's `-n, --no-daemon`: with
/// `TESTWORKER_CLASHING_ARGS` set, the test daemon is built with them, to
/// show that the clash is reported when the command line is built.
#[derive(Debug, Clone, clap::Args)]
struct ClashingArgs {
    /// A number spelled -n.
    #[arg(short = 'n', long)]
    number: Option<u32>,
}

/// The worker with [`ClashingArgs`]; it never gets to run.
struct Clashing;

impl Worker for Clashing {
    type Settings = rookery::NoSettings;
    type Args = ClashingArgs;

    fn init(_ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        Ok(Clashing)
    }

    fn run(&mut self, _ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        Ok(Step::Exit)
    }
}

fn main() -> ExitCode {
    if std::env::var_os("TESTWORKER_CLASHING_ARGS").is_some() {
        return rookery::Daemon::<Clashing>::new("testworker").run();
    }
    // With TESTWORKER_COMMANDS set, a command supervisor with the same
    // hooks (a Rust daemon refuses `workers.command`).
    if std::env::var_os("TESTWORKER_COMMANDS").is_some() {
        return rookery::Commands::new("testworker")
            .hooks(TestHooks::default())
            .run();
    }
    rookery::Daemon::<TestWorker>::new("testworker")
        .version(env!("CARGO_PKG_VERSION"))
        .build_id(&build())
        .about("rookery's test fixture: a worker that hangs, leaks or crashes on request")
        .hooks(TestHooks::default())
        .run()
}
