//! An async pool of Redis list consumers: `redis_worker.rs`'s reliable
//! queue, on the async API (the `tokio` feature), with several jobs in hand
//! per worker process. Copy this one to start an async daemon.
//!
//! The job protocol is `redis_worker`'s (read its documentation): a job is
//! moved atomically from `<queue>` onto this process's processing list
//! (`BLMOVE`), done (the payload hashed, `job_id<TAB>payload_id<TAB>hash`
//! appended to `<results_dir>/<pid>.tsv`), then removed (`LREM`). A poison
//! payload goes to `<queue>:dead`, a flaky one back to the queue once;
//! processing lists of dead workers of this host are moved back to the
//! queue by the others (in `init`, and whenever the queue is empty).
//!
//! What the async API adds:
//!
//! - **Concurrency.** Each worker process keeps up to `concurrency` jobs
//!   in hand. A `BLMOVE` blocks the connection it is sent on, so each of
//!   those jobs has its own connection (a *lane*); one more connection
//!   does the bookkeeping. `run` waits for a free lane (or a stop request),
//!   takes a job on it, and hands the job to a task with a [`rookery::Job`]
//!   (from the `JobReporter`), which the task ends: the worker shows busy
//!   while any job is in hand, and each job is counted once.
//! - **Failed jobs.** A poison or flaky payload is a failed *job*
//!   (`Job::failed`, logged at warning); the worker carries on. A
//!   Redis error is a failed *worker*: the task hands the error back to
//!   `run`, which returns it, and the worker is restarted (its jobs in
//!   hand are recovered from its processing list by the others).
//! - **Graceful stop.** `run` watches the [`rookery::StopHandle`] while it
//!   waits for a free lane; after a stop request the framework waits for
//!   every job in hand to finish, then `cleanup` unregisters the processing
//!   list.
//!
//! `main` is a plain `fn main`: each worker process builds its own tokio
//! runtime after the fork (current-thread here; see
//! `AsyncWorker::runtime`).
//!
//! ```text
//! redis-server --port 6379 &
//! cargo run --example redis_producer -- --url redis://127.0.0.1:6379/ --queue jobs --jobs 1000
//! cargo run --features tokio --example redis_async_worker -- -c examples/redis_async_worker.toml --no-daemon
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::RedisResult;
use rookery::{AsyncWorker, BoxError, Context, Job, Step};
use serde::Deserialize;
use tokio::sync::mpsc;
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
    /// Jobs in hand at once per worker process (one connection each).
    concurrency: usize,
    /// How long one `BLMOVE` waits for a job.
    #[serde(with = "rookery::humantime")]
    block_timeout: Duration,
    /// Extra time each job takes after hashing (simulated slow work, on
    /// the runtime's timer).
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
            concurrency: 4,
            block_timeout: Duration::from_secs(1),
            job_time: Duration::ZERO,
            results_dir: std::env::temp_dir().join("redis_async_worker"),
            host: None,
        }
    }
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

/// What the lanes and tasks of one worker process share.
struct Queue {
    queue: String,
    /// `<queue>:processing:<host>:`, the prefix of this host's lists.
    host_prefix: String,
    /// This process's processing list (all its lanes move jobs onto it).
    processing: String,
    /// The set of every registered processing list.
    registry: String,
    block_timeout: Duration,
    job_time: Duration,
    results: Mutex<Results>,
}

impl Queue {
    /// Moves the next job onto the processing list, waiting at most
    /// `block_timeout` (a stop request is seen at least that often).
    async fn take(&self, con: &mut MultiplexedConnection) -> RedisResult<Option<Vec<u8>>> {
        redis::cmd("BLMOVE")
            .arg(&self.queue)
            .arg(&self.processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(self.block_timeout.as_secs_f64())
            .query_async(con)
            .await
    }

    /// Does one taken job, then removes it from the processing list (or
    /// moves it to the dead-letter list or back to the queue).
    async fn handle(&self, con: &mut MultiplexedConnection, item: &[u8]) -> RedisResult<Outcome> {
        let Some(payload) = queue_job::parse(item) else {
            return self.finish(con, item, Outcome::Dead).await;
        };
        debug!("payload {} started", payload.id);
        match payload.kind {
            Kind::Poison => return self.finish(con, item, Outcome::Dead).await,
            Kind::Flaky => {
                let attempts: u64 = redis::cmd("HINCRBY")
                    .arg(format!("{}:attempts", self.queue))
                    .arg(payload.id)
                    .arg(1)
                    .query_async(con)
                    .await?;
                if attempts == 1 {
                    return self.finish(con, item, Outcome::Requeued).await;
                }
            }
            Kind::Ok => {}
        }
        let hash = queue_job::fnv1a(item);
        if !self.job_time.is_zero() {
            tokio::time::sleep(self.job_time).await;
        }
        let recorded = self
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(payload.id, payload.id, hash);
        if let Err(e) = recorded {
            warn!("payload {}: cannot record its result ({e})", payload.id);
            return self.finish(con, item, Outcome::Requeued).await;
        }
        if payload.kind == Kind::Flaky {
            redis::cmd("HDEL")
                .arg(format!("{}:attempts", self.queue))
                .arg(payload.id)
                .query_async::<()>(con)
                .await?;
        }
        self.finish(con, item, Outcome::Done).await
    }

    /// Removes `item` from the processing list: done with it (`Done`), or,
    /// in the same transaction, pushed back onto the producers' end of the
    /// queue (`Requeued`) or onto the dead-letter list (`Dead`).
    async fn finish(
        &self,
        con: &mut MultiplexedConnection,
        item: &[u8],
        outcome: Outcome,
    ) -> RedisResult<Outcome> {
        let target = match outcome {
            Outcome::Done => {
                redis::cmd("LREM")
                    .arg(&self.processing)
                    .arg(1)
                    .arg(item)
                    .query_async::<()>(con)
                    .await?;
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
            .query_async::<()>(con)
            .await?;
        Ok(outcome)
    }

    /// Moves every job of the processing lists of dead workers of this
    /// host back to the queue; returns how many.
    async fn recover_stranded(&self, con: &mut MultiplexedConnection) -> RedisResult<u64> {
        let lists: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.registry)
            .query_async(con)
            .await?;
        let mut total = 0;
        for list in lists {
            let Some((pid, start)) = owner(&list, &self.host_prefix) else {
                continue; // another host's, or not ours to judge
            };
            if list == self.processing || start_time(pid) == Some(start) {
                continue; // its owner is alive
            }
            let moved = self.drain(con, &list).await?;
            redis::cmd("SREM")
                .arg(&self.registry)
                .arg(&list)
                .query_async::<()>(con)
                .await?;
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
    async fn drain(&self, con: &mut MultiplexedConnection, list: &str) -> RedisResult<u64> {
        let mut moved = 0;
        while redis::cmd("LMOVE")
            .arg(list)
            .arg(&self.queue)
            .arg("RIGHT")
            .arg("RIGHT")
            .query_async::<Option<Vec<u8>>>(con)
            .await?
            .is_some()
        {
            moved += 1;
        }
        Ok(moved)
    }
}

/// The pid and start time in a processing list's name, if it belongs to
/// a process of this host (`<host_prefix><pid>:<start>`).
fn owner(list: &str, host_prefix: &str) -> Option<(i32, u64)> {
    let (pid, start) = list.strip_prefix(host_prefix)?.split_once(':')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// The start time of a live (not zombie) process, in clock ticks after
/// boot; `None` if there is no such process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = rookery_queues::procfs::stat(rookery_queues::procfs::Pid::from_raw(pid))?;
    (!stat.state.exited()).then_some(stat.starttime)
}

/// A lane back from a task: free again, or broken by a Redis error (which
/// ends the worker).
type Lane = Result<MultiplexedConnection, BoxError>;

/// One worker process of the pool.
struct RedisAsyncWorker {
    queue: Arc<Queue>,
    /// The bookkeeping connection (registry, recovery, backlog).
    control: MultiplexedConnection,
    /// Free lanes; a task sends its lane back when its job has ended.
    free: mpsc::UnboundedReceiver<Lane>,
    give_back: mpsc::UnboundedSender<Lane>,
    /// When the backlog was last reported (at most once a second).
    reported: Option<Instant>,
}

impl RedisAsyncWorker {
    /// Reports the queue's length (`LLEN`) for `workers.mode = "backlog"`.
    async fn report_backlog(&mut self, ctx: &Context<Self>) -> RedisResult<()> {
        if self
            .reported
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.reported = Some(Instant::now());
        let len: u64 = redis::cmd("LLEN")
            .arg(&self.queue.queue)
            .query_async(&mut self.control)
            .await?;
        ctx.report_backlog(len);
        Ok(())
    }
}

/// Runs one taken job on its lane, reports it, and gives the lane back.
async fn job(
    queue: Arc<Queue>,
    mut lane: MultiplexedConnection,
    item: Vec<u8>,
    in_hand: Job,
    give_back: mpsc::UnboundedSender<Lane>,
) {
    let id = queue_job::parse(&item).map_or_else(|| "?".into(), |p| p.id.to_string());
    let back = match queue.handle(&mut lane, &item).await {
        Ok(Outcome::Done) => {
            in_hand.done();
            Ok(lane)
        }
        Ok(Outcome::Dead) => {
            in_hand.failed(format!(
                "payload {id}: permanent error; moved to {}:dead",
                queue.queue
            ));
            Ok(lane)
        }
        Ok(Outcome::Requeued) => {
            in_hand.failed(format!(
                "payload {id}: transient error; back in {} for a retry",
                queue.queue
            ));
            Ok(lane)
        }
        Err(e) => {
            // The job stays in this process's processing list; the worker
            // ends, and another recovers it.
            in_hand.failed(format!("payload {id}: {e}"));
            Err(e.into())
        }
    };
    let _ = give_back.send(back);
}

impl AsyncWorker for RedisAsyncWorker {
    type Settings = Settings;
    type Args = rookery::NoArgs;

    async fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        let s = ctx.settings().clone();
        let client = redis::Client::open(s.url.as_str())?;
        let mut control = client.get_multiplexed_async_connection().await?;
        let host = match &s.host {
            Some(h) => h.clone(),
            None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
        };
        let pid = std::process::id() as i32;
        let start = start_time(pid).ok_or("cannot read this process's start time from /proc")?;
        let host_prefix = format!("{}:processing:{host}:", s.queue);
        let queue = Arc::new(Queue {
            queue: s.queue.clone(),
            processing: format!("{host_prefix}{pid}:{start}"),
            host_prefix,
            registry: format!("{}:consumers", s.queue),
            block_timeout: s.block_timeout,
            job_time: s.job_time,
            results: Mutex::new(Results::open(&s.results_dir)?),
        });
        redis::cmd("SADD")
            .arg(&queue.registry)
            .arg(&queue.processing)
            .query_async::<()>(&mut control)
            .await?;
        queue.recover_stranded(&mut control).await?;
        let (give_back, free) = mpsc::unbounded_channel();
        for _ in 0..s.concurrency.max(1) {
            let _ = give_back.send(Ok(client.get_multiplexed_async_connection().await?));
        }
        info!(
            "consuming {:?} through {} with {} jobs at once",
            queue.queue,
            queue.processing,
            s.concurrency.max(1)
        );
        Ok(RedisAsyncWorker {
            queue,
            control,
            free,
            give_back,
            reported: None,
        })
    }

    async fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        self.report_backlog(ctx).await?;
        // A free lane, or the stop request (then the loop ends, and the
        // framework waits for the jobs in hand).
        let stop = ctx.stop_handle();
        let mut lane = tokio::select! {
            lane = self.free.recv() => lane.ok_or("every lane was lost")??,
            _ = stop.stopped() => return Ok(Step::Idle),
        };
        // Paused (`pause`) while this waited: take nothing; the loop waits
        // for the resume (and the jobs in hand go on meanwhile).
        if stop.paused() {
            let _ = self.give_back.send(Ok(lane));
            return Ok(Step::Idle);
        }
        // Waits at most block_timeout.
        let Some(item) = self.queue.take(&mut lane).await? else {
            let _ = self.give_back.send(Ok(lane));
            // Idle: a good moment to look for stranded jobs.
            self.queue.recover_stranded(&mut self.control).await?;
            return Ok(Step::Idle);
        };
        // From here the job is finished even if a stop is requested.
        let in_hand = ctx.reporter().begin();
        tokio::spawn(job(
            self.queue.clone(),
            lane,
            item,
            in_hand,
            self.give_back.clone(),
        ));
        Ok(Step::Spawned)
    }

    async fn cleanup(&mut self, ctx: &mut Context<Self>) {
        // The jobs in hand have ended (after a graceful stop): anything
        // left in the processing list goes back to the queue.
        let list = self.queue.processing.clone();
        let closed = async {
            self.queue.drain(&mut self.control, &list).await?;
            redis::cmd("SREM")
                .arg(&self.queue.registry)
                .arg(&list)
                .query_async::<()>(&mut self.control)
                .await
        };
        if let Err(e) = closed.await {
            warn!("cannot unregister {list}: {e}");
        }
        debug!("disconnecting after {} jobs", ctx.jobs());
    }
}

fn main() -> ExitCode {
    rookery::Daemon::<RedisAsyncWorker>::new("redis_async_worker")
        .version(env!("CARGO_PKG_VERSION"))
        .about("An async pool of Redis reliable-queue consumers, several jobs per worker (rookery example)")
        .run()
}
