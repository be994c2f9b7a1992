//! A pool of Beanstalkd consumers: the example to copy for a real queue.
//!
//! Each worker process opens its own connection in `init` (nothing is
//! shared with the parent), watches one tube, and in each `run` reserves
//! one job, waiting at most `reserve_timeout` so that a stop request is
//! noticed between jobs. The job is real work: the payload is hashed and
//! `job_id<TAB>payload_id<TAB>hash` is appended to `<results_dir>/<pid>.tsv`.
//! Then:
//!
//! - success: the result is recorded, then the job is deleted, in that
//!   order, so a crash in between repeats the job rather than losing it
//!   (at-least-once delivery);
//! - transient error (the results file cannot be written, or a payload
//!   marked `flaky` on its first attempt): released with `release_delay`,
//!   to be retried;
//! - permanent error (a payload marked `poison`, or one that does not
//!   parse): buried, for an operator to inspect and `kick`.
//!
//! A stop request (SIGTERM to the parent, `reload`, `scale -K`) only sets
//! a flag: the job in hand is finished and deleted before the worker
//! exits. A worker that dies anyway (SIGKILL, a crash, a lost machine)
//! loses nothing: beanstalkd puts its reserved job back into the ready
//! queue when the connection closes, or when the job's TTR runs out if the
//! machine vanished, and another worker takes it.
//!
//! ```text
//! beanstalkd -l 127.0.0.1 -p 11300 &
//! cargo run --example beanstalk_producer -- --addr 127.0.0.1:11300 --tube jobs --jobs 1000
//! cargo run --example beanstalk_worker -- -c examples/beanstalk_worker.toml --no-daemon
//! ```
//!
//! `beanstalk_worker -c FILE --bare 10s` runs the same consumer loop in one
//! plain process, without rookery, for 10 seconds and prints its rate: the
//! baseline the benchmark compares the pool against.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use rookery::{BoxError, Context, Step, Worker};
use rookery_queues::beanstalk::{self, Client, Job};
use serde::Deserialize;
use tracing::{debug, info, warn};

#[path = "common/queue_job.rs"]
mod queue_job;

use queue_job::{Kind, Results};

/// The `[app]` table of the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// The beanstalkd server, `host:port`.
    server: String,
    /// The tube to take jobs from.
    tube: String,
    /// How long one `reserve` waits for a job (whole seconds): the longest
    /// an idle worker takes to notice a stop request.
    #[serde(with = "rookery::humantime")]
    reserve_timeout: Duration,
    /// How long a job released after a transient error waits before it is
    /// ready again.
    #[serde(with = "rookery::humantime")]
    release_delay: Duration,
    /// Extra time each job takes after hashing (simulated slow work; keep
    /// it well under the jobs' TTR).
    #[serde(with = "rookery::humantime")]
    job_time: Duration,
    /// Where each worker process appends its results (`<pid>.tsv`).
    results_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: "127.0.0.1:11300".into(),
            tube: "jobs".into(),
            reserve_timeout: Duration::from_secs(1),
            release_delay: Duration::from_secs(1),
            job_time: Duration::ZERO,
            results_dir: std::env::temp_dir().join("beanstalk_worker"),
        }
    }
}

/// The worker's own command-line options.
#[derive(Debug, Clone, clap::Args)]
struct Args {
    /// Benchmark baseline: run the consumer loop in this one process,
    /// without rookery, for DURATION; then print the jobs per second.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    bare: Option<Duration>,
}

/// What happened to a reserved job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Done, recorded and deleted.
    Done,
    /// Released for a retry after a transient error.
    Released,
    /// Buried after a permanent error.
    Buried,
}

/// One consumer: a connection watching the tube, and a results file. The
/// rookery worker and the bare benchmark loop both drive it.
struct Consumer {
    client: Client,
    results: Results,
    reserve_timeout: Duration,
    release_delay: Duration,
    job_time: Duration,
}

impl Consumer {
    /// Connects, watches the tube (only it) and opens the results file.
    fn connect(s: &Settings) -> Result<Consumer, BoxError> {
        let mut client = Client::connect(&s.server)?;
        // A dead server must not hang a worker for ever; a reserve waits at
        // most reserve_timeout, so this is ample.
        client.set_io_timeout(Some(s.reserve_timeout + Duration::from_secs(30)))?;
        client.watch(&s.tube)?;
        if s.tube != "default" {
            client.ignore("default")?;
        }
        let results = Results::open(&s.results_dir)?.tagged(build());
        Ok(Consumer {
            client,
            results,
            reserve_timeout: s.reserve_timeout,
            release_delay: s.release_delay,
            job_time: s.job_time,
        })
    }

    /// Waits up to `reserve_timeout` for a job.
    fn reserve(&mut self) -> Result<Option<Job>, beanstalk::Error> {
        self.client.reserve_timeout(self.reserve_timeout)
    }

    /// Does one reserved job, then deletes, releases or buries it. An error
    /// means the connection is unusable (the job goes back to the queue
    /// when it closes).
    fn handle(&mut self, job: &Job) -> Result<Outcome, BoxError> {
        let Some(payload) = queue_job::parse(&job.body) else {
            warn!("job {}: unreadable payload; burying it", job.id);
            return self.bury(job.id);
        };
        debug!("job {} (payload {}) started", job.id, payload.id);
        match payload.kind {
            Kind::Poison => {
                warn!(
                    "job {} (payload {}): permanent error; burying it",
                    job.id, payload.id
                );
                return self.bury(job.id);
            }
            Kind::Flaky if self.client.stats_job(job.id)?.get_u64("releases") == Some(0) => {
                warn!(
                    "job {} (payload {}): transient error; retrying later",
                    job.id, payload.id
                );
                return self.release(job.id);
            }
            Kind::Flaky | Kind::Ok => {}
        }
        let hash = queue_job::fnv1a(&job.body);
        if !self.job_time.is_zero() {
            std::thread::sleep(self.job_time);
        }
        if let Err(e) = self.results.record(job.id, payload.id, hash) {
            warn!("job {}: cannot record its result ({e}); retrying later", job.id);
            return self.release(job.id);
        }
        match self.client.delete(job.id) {
            Ok(()) => {}
            // Its TTR ran out and another worker holds it now: it will be
            // done twice, which at-least-once delivery allows.
            Err(e @ beanstalk::Error::NotFound { .. }) => warn!("{e} (TTR exceeded?)"),
            Err(e) => return Err(e.into()),
        }
        Ok(Outcome::Done)
    }

    fn release(&mut self, id: u64) -> Result<Outcome, BoxError> {
        match self.client.release(id, 1024, self.release_delay) {
            Ok(()) => Ok(Outcome::Released),
            Err(e @ (beanstalk::Error::NotFound { .. } | beanstalk::Error::Buried { .. })) => {
                warn!("{e}");
                Ok(Outcome::Released)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn bury(&mut self, id: u64) -> Result<Outcome, BoxError> {
        match self.client.bury(id, 1024) {
            Ok(()) => Ok(Outcome::Buried),
            Err(e @ beanstalk::Error::NotFound { .. }) => {
                warn!("{e}");
                Ok(Outcome::Buried)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// One worker process of the pool.
struct BeanstalkWorker {
    consumer: Consumer,
    tube: String,
    /// When the backlog was last reported (at most once a second: one
    /// `stats-tube` round trip, not one per job).
    reported: Option<std::time::Instant>,
}

impl BeanstalkWorker {
    /// Reports the tube's ready jobs for `workers.mode = "backlog"`.
    fn report_backlog(&mut self, ctx: &Context<Self>) -> Result<(), BoxError> {
        if self
            .reported
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.reported = Some(std::time::Instant::now());
        let ready = match self.consumer.client.stats_tube(&self.tube) {
            Ok(s) => s.get_u64("current-jobs-ready").unwrap_or(0),
            // A tube nobody has used yet does not exist: nothing waits.
            Err(rookery_queues::beanstalk::Error::NotFound { .. }) => 0,
            Err(e) => return Err(e.into()),
        };
        ctx.report_backlog(ready);
        Ok(())
    }
}

impl Worker for BeanstalkWorker {
    type Settings = Settings;
    type Args = Args;

    fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        let s = ctx.settings();
        let consumer = Consumer::connect(s)?;
        info!(
            "watching tube {:?} on {}; results in {}",
            s.tube,
            s.server,
            consumer.results.path().display()
        );
        let tube = s.tube.clone();
        Ok(BeanstalkWorker {
            consumer,
            tube,
            reported: None,
        })
    }

    fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        self.report_backlog(ctx)?;
        // Waits at most reserve_timeout: a stop request is seen between jobs.
        let Some(job) = self.consumer.reserve()? else {
            return Ok(Step::Idle);
        };
        // From here the job is finished even if a stop is requested. Its
        // id labels it in `status` and in the parent's lines about it.
        ctx.begin_job_labeled(&format!("beanstalkd job {}", job.id));
        self.consumer.handle(&job)?;
        Ok(Step::Worked)
    }

    fn cleanup(&mut self, ctx: &mut Context<Self>) {
        debug!("disconnecting after {} jobs", ctx.jobs());
    }
}

/// `--bare`: the consumer loop alone, in this process, for `run_for`.
fn bare(config: Option<&Path>, run_for: Duration) -> ExitCode {
    queue_job::run_bare(
        "beanstalk_worker",
        config,
        run_for,
        Consumer::connect,
        |c: &mut Consumer| match c.reserve()? {
            Some(job) => c.handle(&job).map(|_| true),
            None => Ok(false),
        },
        |_| Ok(()),
    )
}

/// The build id, compiled into the binary's bytes: the upgrade tests make
/// a new build by rewriting it in a copy (as tests/it/upgrade.rs says),
/// and each result line names the build that did the job.
static BUILD: [u8; 24] = *b"TESTBUILD:aaaaaaaaaaaaaa";

/// This binary's build id (read through `black_box`: the bytes in the
/// file are the id).
fn build() -> String {
    let bytes: &[u8; 24] = std::hint::black_box(&BUILD);
    String::from_utf8_lossy(&bytes[10..])
        .trim_end_matches('.')
        .to_string()
}

fn main() -> ExitCode {
    if let Some((config, run_for)) = queue_job::bare_args() {
        return bare(config.as_deref(), run_for);
    }
    rookery::Daemon::<BeanstalkWorker>::new("beanstalk_worker")
        .version(env!("CARGO_PKG_VERSION"))
        .build_id(&build())
        .about("A pool of Beanstalkd consumers (rookery example)")
        .run()
}
