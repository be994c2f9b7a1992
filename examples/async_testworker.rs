//! An async worker built for the integration tests (`tests/it/async_workers.rs`):
//! it makes up its own jobs, so that the async API's bookkeeping can be
//! checked without a broker. It is not a template; copy
//! `redis_async_worker.rs` to start a real async daemon.
//!
//! Each job waits `job_time` on the runtime's timer. With `concurrency =
//! 0` a job is done inside `run` (reported through `Step`); with
//! `concurrency = N` `run` starts up to N jobs at once on spawned tasks
//! that report through a `JobReporter`. Each job appends `begin ID` and
//! then `done ID` (or `failed ID`) to `<results_dir>/<pid>.log`, and
//! `cleanup` logs `cleanup: scoreboard N jobs`, so a test can compare what
//! the scoreboard counted with what was done.
//!
//! | key | effect |
//! |---|---|
//! | `job_time = "50ms"` | how long each job takes |
//! | `job_time_step = "0s"` | job N takes `job_time + (N % 3) * job_time_step` (jobs in hand end at different times) |
//! | `concurrency = 0` | 0: one job per `run`; N: up to N jobs at once on tasks |
//! | `fail_every = 0` | every Nth job of a worker fails (the worker carries on) |
//! | `panic_every = 0` | with `concurrency`, every Nth job's task panics (recorded as failed; its `Job` is dropped, uncounted) |
//! | `threads = 0` | 0: current-thread runtime; N: multi-thread with N worker threads |
//! | `results_dir = "PATH"` | where the per-process logs go |
//! | `ticker = "0s"` | if set, a task started in `init` appends `tick N` this often, unless the pool is paused (it waits with `StopHandle::resumed`) |
//!
//! With `ASYNC_TESTWORKER_TOKIO_MAIN=1` in its environment, `main` runs
//! inside a multi-thread tokio runtime, as `#[tokio::main]` would: the
//! start must be refused with a hint.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rookery::{AsyncWorker, BoxError, Context, Step};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::info;

/// The `[app]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    #[serde(with = "rookery::humantime")]
    job_time: Duration,
    #[serde(with = "rookery::humantime")]
    job_time_step: Duration,
    concurrency: usize,
    fail_every: u64,
    panic_every: u64,
    threads: usize,
    results_dir: PathBuf,
    #[serde(with = "rookery::humantime")]
    ticker: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            job_time: Duration::from_millis(50),
            job_time_step: Duration::ZERO,
            concurrency: 0,
            fail_every: 0,
            panic_every: 0,
            threads: 0,
            results_dir: std::env::temp_dir().join("async_testworker"),
            ticker: Duration::ZERO,
        }
    }
}

/// The per-process record of jobs: one `write` per line (O_APPEND).
struct Record(std::fs::File);

impl Record {
    fn line(&self, what: &str, id: u64) {
        let _ = (&self.0).write_all(format!("{what} {id}\n").as_bytes());
    }
}

/// One worker process.
struct AsyncTestWorker {
    settings: Settings,
    record: Arc<Record>,
    next: Arc<AtomicU64>,
    permits: Arc<Semaphore>,
}

/// One job: waits `job_time`, records it; `Err` if it is one that fails.
async fn job(s: &Settings, record: &Record, id: u64) -> Result<(), BoxError> {
    record.line("begin", id);
    tokio::time::sleep(s.job_time + s.job_time_step * (id % 3) as u32).await;
    if s.fail_every > 0 && id.is_multiple_of(s.fail_every) {
        record.line("failed", id);
        return Err(format!("job {id}: failed on purpose").into());
    }
    record.line("done", id);
    Ok(())
}

impl AsyncWorker for AsyncTestWorker {
    type Settings = Settings;
    type Args = rookery::NoArgs;

    fn runtime(ctx: &Context<Self>) -> std::io::Result<tokio::runtime::Runtime> {
        match ctx.settings().threads {
            0 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            n => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .enable_all()
                .build(),
        }
    }

    async fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        let settings = ctx.settings().clone();
        std::fs::create_dir_all(&settings.results_dir)?;
        let path = settings.results_dir.join(format!("{}.log", std::process::id()));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        info!(
            "async worker ready (concurrency {}, threads {})",
            settings.concurrency, settings.threads
        );
        let record = Arc::new(Record(file));
        if !settings.ticker.is_zero() {
            // Work a task takes on its own: it honours the pause itself.
            let (stop, record, every) = (ctx.stop_handle(), record.clone(), settings.ticker);
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.is_stopped() {
                    if stop.paused() {
                        stop.resumed().await;
                        continue;
                    }
                    n += 1;
                    record.line("tick", n);
                    tokio::time::sleep(every).await;
                }
            });
        }
        Ok(AsyncTestWorker {
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            settings,
            record,
            next: Arc::new(AtomicU64::new(1)),
        })
    }

    async fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        let stop = ctx.stop_handle();
        if self.settings.concurrency == 0 {
            let id = self.next.fetch_add(1, Ordering::SeqCst);
            ctx.begin_job();
            return Ok(match job(&self.settings, &self.record, id).await {
                Ok(()) => Step::Worked,
                Err(e) => Step::Failed(e),
            });
        }
        // Wait for room (or the stop), then start one job on a task.
        let permit = tokio::select! {
            p = self.permits.clone().acquire_owned() => p?,
            _ = stop.stopped() => return Ok(Step::Idle),
        };
        if stop.paused() {
            return Ok(Step::Idle); // paused while this waited: take nothing
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let in_hand = ctx.reporter().begin();
        let (settings, record) = (self.settings.clone(), self.record.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if settings.panic_every > 0 && id.is_multiple_of(settings.panic_every) {
                record.line("begin", id);
                record.line("failed", id);
                panic!("job {id}: panicked on purpose");
            }
            match job(&settings, &record, id).await {
                Ok(()) => in_hand.done(),
                Err(e) => in_hand.failed(e),
            }
        });
        Ok(Step::Spawned)
    }

    async fn cleanup(&mut self, ctx: &mut Context<Self>) {
        info!("cleanup: scoreboard {} jobs", ctx.jobs());
    }
}

fn main() -> ExitCode {
    let daemon = || {
        rookery::Daemon::<AsyncTestWorker>::new("async_testworker")
            .about("rookery's async test fixture: made-up jobs, run one at a time or concurrently")
            .run()
    };
    if std::env::var_os("ASYNC_TESTWORKER_TOKIO_MAIN").is_some() {
        // What `#[tokio::main]` expands to: the runtime's threads exist
        // before rookery starts.
        let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
        return rt.block_on(async { daemon() });
    }
    daemon()
}
