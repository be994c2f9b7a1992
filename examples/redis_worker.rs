//! A pool of Redis list consumers using the reliable-queue pattern.
//!
//! Producers `LPUSH` jobs onto the list `<queue>`. Each worker process
//! opens its own connection in `init` and, in each `run`:
//!
//! 1. `BLMOVE <queue> <processing> RIGHT LEFT <block_timeout>` atomically
//!    moves the oldest job onto the worker's own *processing list*, waiting
//!    at most `block_timeout` so that a stop request is noticed between
//!    jobs;
//! 2. does the job (hashes the payload and appends
//!    `job_id<TAB>payload_id<TAB>hash` to `<results_dir>/<pid>.tsv`; Redis
//!    has no job ids, so the payload id is both);
//! 3. `LREM <processing> 1 <job>` removes it: done.
//!
//! A job is therefore always in exactly one list: queued, or in the
//! processing list of the worker that has it. A permanent error (payload
//! marked `poison`, or unreadable) moves it to the dead-letter list
//! `<queue>:dead`; a transient one (the result cannot be recorded, or a
//! `flaky` payload on its first attempt, counted in the hash
//! `<queue>:attempts`) puts it back at the end of the queue. Both moves
//! are one `MULTI`/`EXEC` transaction.
//!
//! # Stranded jobs: who puts them back
//!
//! A worker that dies between `BLMOVE` and `LREM` (SIGKILL, a crash, the
//! OOM killer, the whole daemon killed) leaves its job in its processing
//! list. Unlike beanstalkd's TTR, Redis will never return it by itself, so
//! someone must move it back. Here the *workers* do it, not a parent hook:
//!
//! - A processing list is named `<queue>:processing:<host>:<pid>:<start>`,
//!   where `start` is the process's start time from `/proc/<pid>/stat`, and
//!   is registered in the set `<queue>:consumers` before the first
//!   `BLMOVE`.
//! - In `init`, and whenever its `BLMOVE` times out (the queue is empty),
//!   a worker looks at the registered lists *of its own host* and, for each
//!   whose owner is dead (no such pid, a zombie, or a different start
//!   time: the pid was reused), moves every job back with `LMOVE ... RIGHT
//!   RIGHT` (to the consuming end, so they are next) until the list is
//!   empty, then unregisters it. `LMOVE` is atomic, so two workers
//!   recovering the same list at once move each job exactly once.
//!
//! Why not a per-slot list that the replacement takes over, or the
//! parent's `on_worker_exit` hook? During a rolling `reload` two processes
//! share a slot, so a list keyed by slot would be shared by a live worker;
//! keying by pid avoids that, and then *any* worker of the host can judge
//! liveness from `/proc`. The replacement of a killed worker recovers its
//! list at once (its `init` runs after the parent reaped the dead one), a
//! worker that is not replaced (retired by `scale -K`, or `restart =
//! "never"`) is recovered by the next idle worker, and so is everything
//! left by a parent killed with `kill -9` once the daemon is started again.
//! A parent hook would keep a Redis connection and blocking calls in the
//! parent's event loop, and would miss exactly that last case.
//!
//! A host that never comes back leaves its lists behind: move them by
//! hand (`LMOVE <list> <queue> RIGHT RIGHT` until nil), or, once it is
//! certainly gone, start a worker elsewhere with its `host` setting (the
//! hostname by default), which recovers them.
//!
//! ```text
//! redis-server --port 6379 &
//! cargo run --example redis_producer -- --url redis://127.0.0.1:6379/ --queue jobs --jobs 1000
//! cargo run --example redis_worker -- -c examples/redis_worker.toml --no-daemon
//! ```
//!
//! `redis_worker -c FILE --bare 10s` runs the same consumer loop in one
//! plain process, without rookery, and prints its rate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use redis::{Connection, RedisResult};
use rookery::{BoxError, Context, Step, Worker};
use serde::Deserialize;
use tracing::{debug, info, warn};

#[path = "common/queue_job.rs"]
mod queue_job;

use queue_job::{Kind, Results};

/// The `[app]` table of the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// The Redis server.
    url: String,
    /// The list producers push jobs onto.
    queue: String,
    /// How long one `BLMOVE` waits for a job: the longest an idle worker
    /// takes to notice a stop request.
    #[serde(with = "rookery::humantime")]
    block_timeout: Duration,
    /// Extra time each job takes after hashing (simulated slow work).
    #[serde(with = "rookery::humantime")]
    job_time: Duration,
    /// Where each worker process appends its results (`<pid>.tsv`).
    results_dir: PathBuf,
    /// This machine's name in processing-list keys (default: the
    /// hostname). It must differ between machines sharing the server.
    host: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: "redis://127.0.0.1:6379/".into(),
            queue: "jobs".into(),
            block_timeout: Duration::from_secs(1),
            job_time: Duration::ZERO,
            results_dir: std::env::temp_dir().join("redis_worker"),
            host: None,
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

/// What happened to a taken job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Done, recorded and removed.
    Done,
    /// Put back at the end of the queue after a transient error.
    Requeued,
    /// Moved to the dead-letter list after a permanent error.
    Dead,
}

/// One consumer: a connection, its processing list, and a results file.
/// The rookery worker and the bare benchmark loop both drive it.
struct Consumer {
    con: Connection,
    queue: String,
    /// `<queue>:processing:<host>:`, the prefix of this host's lists.
    host_prefix: String,
    /// This process's processing list.
    processing: String,
    /// The set of every registered processing list.
    registry: String,
    block_timeout: Duration,
    job_time: Duration,
    results: Results,
}

impl Consumer {
    /// Connects, registers this process's processing list, and recovers
    /// the lists of dead workers of this host.
    fn connect(s: &Settings) -> Result<Consumer, BoxError> {
        // No socket timeouts: with one, the kernel does not restart a read
        // interrupted by the stop signal, and the redis crate reports that
        // as an error, so a graceful stop would break the connection. A
        // worker stuck on a dead server is caught by
        // `workers.heartbeat_timeout` instead (BLMOVE returns at least
        // every block_timeout, and the loop beats between jobs).
        let con = redis::Client::open(s.url.as_str())?.get_connection()?;
        let host = match &s.host {
            Some(h) => h.clone(),
            None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
        };
        let pid = std::process::id() as i32;
        let start = start_time(pid).ok_or("cannot read this process's start time from /proc")?;
        let host_prefix = format!("{}:processing:{host}:", s.queue);
        let mut c = Consumer {
            con,
            queue: s.queue.clone(),
            processing: format!("{host_prefix}{pid}:{start}"),
            host_prefix,
            registry: format!("{}:consumers", s.queue),
            block_timeout: s.block_timeout,
            job_time: s.job_time,
            results: Results::open(&s.results_dir)?,
        };
        redis::cmd("SADD")
            .arg(&c.registry)
            .arg(&c.processing)
            .query::<()>(&mut c.con)?;
        c.recover_stranded()?;
        Ok(c)
    }

    /// Moves the next job onto the processing list, waiting at most
    /// `block_timeout`.
    fn take(&mut self) -> RedisResult<Option<Vec<u8>>> {
        redis::cmd("BLMOVE")
            .arg(&self.queue)
            .arg(&self.processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(self.block_timeout.as_secs_f64())
            .query(&mut self.con)
    }

    /// Does one taken job, then removes it from the processing list (or
    /// moves it to the dead-letter list or back to the queue).
    fn handle(&mut self, item: &[u8]) -> Result<Outcome, BoxError> {
        let Some(payload) = queue_job::parse(item) else {
            warn!("unreadable payload; moving it to {}:dead", self.queue);
            return Ok(self.finish(item, Outcome::Dead)?);
        };
        debug!("payload {} started", payload.id);
        match payload.kind {
            Kind::Poison => {
                warn!(
                    "payload {}: permanent error; moving it to {}:dead",
                    payload.id, self.queue
                );
                return Ok(self.finish(item, Outcome::Dead)?);
            }
            Kind::Flaky => {
                let attempts: u64 = redis::cmd("HINCRBY")
                    .arg(format!("{}:attempts", self.queue))
                    .arg(payload.id)
                    .arg(1)
                    .query(&mut self.con)?;
                if attempts == 1 {
                    warn!("payload {}: transient error; retrying later", payload.id);
                    return Ok(self.finish(item, Outcome::Requeued)?);
                }
            }
            Kind::Ok => {}
        }
        let hash = queue_job::fnv1a(item);
        if !self.job_time.is_zero() {
            std::thread::sleep(self.job_time);
        }
        if let Err(e) = self.results.record(payload.id, payload.id, hash) {
            warn!(
                "payload {}: cannot record its result ({e}); retrying later",
                payload.id
            );
            return Ok(self.finish(item, Outcome::Requeued)?);
        }
        if payload.kind == Kind::Flaky {
            redis::cmd("HDEL")
                .arg(format!("{}:attempts", self.queue))
                .arg(payload.id)
                .query::<()>(&mut self.con)?;
        }
        Ok(self.finish(item, Outcome::Done)?)
    }

    /// Removes `item` from the processing list: done with it (`Done`), or,
    /// in the same transaction, pushed back onto the producers' end of the
    /// queue (`Requeued`) or onto the dead-letter list (`Dead`).
    fn finish(&mut self, item: &[u8], outcome: Outcome) -> RedisResult<Outcome> {
        let target = match outcome {
            Outcome::Done => {
                redis::cmd("LREM")
                    .arg(&self.processing)
                    .arg(1)
                    .arg(item)
                    .query::<()>(&mut self.con)?;
                return Ok(outcome);
            }
            Outcome::Requeued => self.queue.clone(),
            Outcome::Dead => format!("{}:dead", self.queue),
        };
        redis::pipe()
            .atomic()
            .cmd("LREM")
            .arg(&self.processing)
            .arg(1)
            .arg(item)
            .ignore()
            .cmd("LPUSH")
            .arg(target)
            .arg(item)
            .ignore()
            .query::<()>(&mut self.con)?;
        Ok(outcome)
    }

    /// Moves every job of the processing lists of dead workers of this
    /// host back to the queue; returns how many.
    fn recover_stranded(&mut self) -> RedisResult<u64> {
        let lists: Vec<String> = redis::cmd("SMEMBERS").arg(&self.registry).query(&mut self.con)?;
        let mut total = 0;
        for list in lists {
            let Some((pid, start)) = owner(&list, &self.host_prefix) else {
                continue; // another host's, or not ours to judge
            };
            if list == self.processing || start_time(pid) == Some(start) {
                continue; // its owner is alive
            }
            let moved = self.drain(&list)?;
            redis::cmd("SREM")
                .arg(&self.registry)
                .arg(&list)
                .query::<()>(&mut self.con)?;
            if moved > 0 {
                info!(
                    "moved {moved} stranded job(s) of dead worker pid {pid} back to {}",
                    self.queue
                );
            }
            total += moved;
        }
        Ok(total)
    }

    /// Moves every job of `list` to the consuming end of the queue.
    fn drain(&mut self, list: &str) -> RedisResult<u64> {
        let mut moved = 0;
        while redis::cmd("LMOVE")
            .arg(list)
            .arg(&self.queue)
            .arg("RIGHT")
            .arg("RIGHT")
            .query::<Option<Vec<u8>>>(&mut self.con)?
            .is_some()
        {
            moved += 1;
        }
        Ok(moved)
    }

    /// Unregisters this process's list (after a graceful stop it is empty;
    /// anything left goes back to the queue first).
    fn close(&mut self) -> RedisResult<()> {
        let list = self.processing.clone();
        self.drain(&list)?;
        redis::cmd("SREM")
            .arg(&self.registry)
            .arg(&list)
            .query::<()>(&mut self.con)
    }
}

/// The pid and start time in a processing list's name, if it belongs to
/// a process of this host (`<host_prefix><pid>:<start>`).
fn owner(list: &str, host_prefix: &str) -> Option<(i32, u64)> {
    let (pid, start) = list.strip_prefix(host_prefix)?.split_once(':')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// The start time of a live (not zombie) process, in clock ticks after
/// boot (`/proc/<pid>/stat` field 22); `None` if there is no such process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = rookery_queues::procfs::stat(rookery_queues::procfs::Pid::from_raw(pid))?;
    (!stat.state.exited()).then_some(stat.starttime)
}

/// One worker process of the pool.
struct RedisWorker {
    consumer: Consumer,
    /// When the backlog was last reported (at most once a second).
    reported: Option<std::time::Instant>,
}

impl RedisWorker {
    /// Reports the queue's length (`LLEN`) for `workers.mode = "backlog"`.
    fn report_backlog(&mut self, ctx: &Context<Self>) -> Result<(), BoxError> {
        if self
            .reported
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.reported = Some(std::time::Instant::now());
        let len: u64 = redis::cmd("LLEN")
            .arg(&self.consumer.queue)
            .query(&mut self.consumer.con)?;
        ctx.report_backlog(len);
        Ok(())
    }
}

impl Worker for RedisWorker {
    type Settings = Settings;
    type Args = Args;

    fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        let consumer = Consumer::connect(ctx.settings())?;
        info!(
            "consuming {:?} through {}; results in {}",
            consumer.queue,
            consumer.processing,
            consumer.results.path().display()
        );
        Ok(RedisWorker {
            consumer,
            reported: None,
        })
    }

    fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        self.report_backlog(ctx)?;
        // Waits at most block_timeout: a stop request is seen between jobs.
        let Some(item) = self.consumer.take()? else {
            // Idle: a good moment to look for stranded jobs.
            self.consumer.recover_stranded()?;
            return Ok(Step::Idle);
        };
        // From here the job is finished even if a stop is requested. Its
        // id (the payload's first word) labels it in `status` and in the
        // parent's lines about it.
        let id = item.split(|b| *b == b' ').next().unwrap_or_default();
        ctx.begin_job_labeled(&format!("job {}", String::from_utf8_lossy(id)));
        self.consumer.handle(&item)?;
        Ok(Step::Worked)
    }

    fn cleanup(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = self.consumer.close() {
            warn!("cannot unregister {}: {e}", self.consumer.processing);
        }
        debug!("disconnecting after {} jobs", ctx.jobs());
    }
}

/// `--bare`: the consumer loop alone, in this process, for `run_for`.
fn bare(config: Option<&Path>, run_for: Duration) -> ExitCode {
    queue_job::run_bare(
        "redis_worker",
        config,
        run_for,
        Consumer::connect,
        |c: &mut Consumer| match c.take()? {
            Some(item) => c.handle(&item).map(|_| true),
            None => Ok(false),
        },
        |mut c| Ok(c.close()?),
    )
}

fn main() -> ExitCode {
    if let Some((config, run_for)) = queue_job::bare_args() {
        return bare(config.as_deref(), run_for);
    }
    rookery::Daemon::<RedisWorker>::new("redis_worker")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A pool of Redis reliable-queue consumers (rookery example)")
        .run()
}
