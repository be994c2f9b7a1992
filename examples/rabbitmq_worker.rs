//! A pool of RabbitMQ consumers on an async AMQP client (`lapin`), with
//! rookery's async worker API (`AsyncWorker`, the `tokio` feature).
//!
//! Each worker process builds its own tokio runtime after the fork (the
//! framework does it; the parent never starts one), then opens its own
//! connection and channel in `init`
//! (nothing is shared with the parent), declares the queue with its
//! dead-letter exchange (`common/amqp_topology.rs`), sets the channel's
//! prefetch (`prefetch`, 1 by default: the broker sends a worker its next
//! message only once the one in hand is acknowledged) and starts a
//! consumer with manual acknowledgements. Each `run` takes one delivery
//! and does the job: the payload is hashed and
//! `job_id<TAB>payload_id<TAB>hash<TAB>build` is appended to
//! `<results_dir>/<pid>.tsv` (the job id is the message's `message_id`,
//! which the producer sets to the payload id; the build id is the one
//! compiled into the binary, which the upgrade test rewrites). Then:
//!
//! - success: the result is recorded, then the delivery is acknowledged
//!   (`basic.ack`), in that order, so a crash in between repeats the job
//!   rather than losing it (at-least-once delivery);
//! - transient error (the results file cannot be written, or a payload
//!   marked `flaky` on its first delivery): `basic.nack` with requeue, so
//!   the broker delivers it again (with the `redelivered` flag set);
//! - permanent error (a payload marked `poison`, or one that does not
//!   parse): `basic.reject` without requeue, so the broker dead-letters it
//!   to `<queue>.dlx`, whence it lands in the queue `<queue>.dead` for an
//!   operator.
//!
//! A transient or permanent error is a failed job (`Step::Failed`): logged
//! at warning and counted, and the worker carries on. Only a lost
//! connection ends the worker (rookery restarts it with back-off, and the
//! new process connects again).
//!
//! A stop request (SIGTERM to the parent, `reload`, `scale -K`) wakes a
//! worker waiting for a delivery at once (`StopHandle::stopped`); a worker
//! with a job in hand finishes and acknowledges it first.
//! Then `cleanup` cancels the consumer and closes the channel and the
//! connection; a message the broker had already sent ahead (prefetch > 1)
//! goes back to the queue, unacknowledged, undone. A worker that dies
//! anyway (SIGKILL, a crash, a lost machine) loses nothing either: when
//! its connection closes (or its AMQP heartbeats stop, for a vanished
//! machine), the broker requeues every message it had not acknowledged,
//! and another worker takes them.
//!
//! The worker reports the queue's ready messages (a passive
//! `queue.declare`, at most once a second) for `workers.mode = "backlog"`.
//!
//! ```text
//! rabbitmq-server &          # Debian: apt install rabbitmq-server
//! cargo run --example rabbitmq_producer -- --url amqp://127.0.0.1:5672/%2f --queue jobs --jobs 1000
//! cargo run --example rabbitmq_worker -- -c examples/rabbitmq_worker.toml --no-daemon
//! ```
//!
//! `rabbitmq_worker -c FILE --bare 10s` runs the same consumer loop in one
//! plain process, without rookery, and prints its rate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use rookery::{AsyncWorker, BoxError, Context, Step};
use serde::Deserialize;
use tracing::{debug, info, warn};

#[path = "common/amqp_topology.rs"]
mod amqp_topology;
#[path = "common/queue_job.rs"]
mod queue_job;

use queue_job::{Kind, Results};

/// The `[app]` table of the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// The broker (AMQP URI; `%2f` is the default virtual host `/`).
    url: String,
    /// The queue to consume.
    queue: String,
    /// How many unacknowledged messages the broker may send this worker
    /// ahead (`basic.qos`). 1: each worker holds only the job in hand, so
    /// a slow job never delays messages another worker could take.
    prefetch: u16,
    /// How long one `run` waits for a delivery before it returns idle, so
    /// that the worker loop beats its heartbeat and the backlog is
    /// reported while the queue is empty. (A stop request ends the wait at
    /// once.)
    #[serde(with = "rookery::humantime")]
    wait_timeout: Duration,
    /// Extra time each job takes after hashing (simulated slow work).
    #[serde(with = "rookery::humantime")]
    job_time: Duration,
    /// Where each worker process appends its results (`<pid>.tsv`).
    results_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: "amqp://127.0.0.1:5672/%2f".into(),
            queue: "jobs".into(),
            prefetch: 1,
            wait_timeout: Duration::from_secs(1),
            job_time: Duration::ZERO,
            results_dir: std::env::temp_dir().join("rabbitmq_worker"),
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

/// What happened to a delivery.
#[derive(Debug)]
enum Outcome {
    /// Done, recorded and acknowledged.
    Done,
    /// Negatively acknowledged with requeue after a transient error (why).
    Requeued(String),
    /// Rejected without requeue after a permanent error (why):
    /// dead-lettered.
    Dead(String),
}

/// One consumer: a connection, a channel, the consumer on it and a
/// results file. The rookery worker and the bare benchmark loop both
/// drive it.
struct Consumer {
    connection: Connection,
    channel: Channel,
    deliveries: lapin::Consumer,
    queue: String,
    tag: String,
    job_time: Duration,
    results: Results,
}

impl Consumer {
    /// Connects, declares the topology, sets the prefetch and starts
    /// consuming. `name` goes into the connection's name and the consumer
    /// tag, so `rabbitmqctl list_consumers` shows which process is which.
    async fn connect(s: &Settings, name: &str) -> Result<Consumer, BoxError> {
        let pid = std::process::id();
        let properties =
            ConnectionProperties::default().with_connection_name(format!("{name} pid {pid}").into());
        let connection = Connection::connect(&s.url, properties).await?;
        let channel = connection.create_channel().await?;
        amqp_topology::declare(&channel, &s.queue).await?;
        channel.basic_qos(s.prefetch, BasicQosOptions::default()).await?;
        let tag = format!("{name}-{pid}");
        let deliveries = channel
            .basic_consume(
                s.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(), // manual acknowledgements
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer {
            connection,
            channel,
            deliveries,
            queue: s.queue.clone(),
            tag,
            job_time: s.job_time,
            results: Results::open(&s.results_dir)?.tagged(build()),
        })
    }

    /// The next delivery. Cancel-safe: a delivery is never lost when the
    /// future is dropped before it is ready. An error if the connection or
    /// the consumer is gone (the worker is restarted and reconnects).
    async fn next(&mut self) -> Result<Delivery, BoxError> {
        match self.deliveries.next().await {
            Some(delivery) => Ok(delivery?),
            None => Err(format!("the broker cancelled consumer {}", self.tag).into()),
        }
    }

    /// Does one job, then acknowledges it (or requeues or rejects it).
    async fn handle(&mut self, delivery: &Delivery) -> Result<Outcome, BoxError> {
        let dead = amqp_topology::dead_letter_queue(&self.queue);
        let Some(payload) = queue_job::parse(&delivery.data) else {
            let why = format!("unreadable payload: permanent error; rejecting it to {dead}");
            return finish(delivery, Outcome::Dead(why)).await;
        };
        let job = job_id(delivery).unwrap_or(payload.id);
        debug!("job {job} (payload {}) started", payload.id);
        match payload.kind {
            Kind::Poison => {
                let why = format!("payload {}: permanent error; rejecting it to {dead}", payload.id);
                return finish(delivery, Outcome::Dead(why)).await;
            }
            // The broker marks every delivery after the first.
            Kind::Flaky if !delivery.redelivered => {
                let why = format!("payload {}: transient error; requeued", payload.id);
                return finish(delivery, Outcome::Requeued(why)).await;
            }
            Kind::Flaky | Kind::Ok => {}
        }
        let hash = queue_job::fnv1a(&delivery.data);
        if !self.job_time.is_zero() {
            tokio::time::sleep(self.job_time).await;
        }
        if let Err(e) = self.results.record(job, payload.id, hash) {
            let why = format!("payload {}: cannot record its result ({e}); requeued", payload.id);
            return finish(delivery, Outcome::Requeued(why)).await;
        }
        finish(delivery, Outcome::Done).await
    }

    /// The queue's ready messages (not those delivered and unacknowledged).
    async fn backlog(&self) -> Result<u64, BoxError> {
        Ok(amqp_topology::ready(&self.channel, &self.queue).await?.into())
    }

    /// Cancels the consumer and closes the channel and the connection:
    /// messages sent ahead and not acknowledged go back to the queue.
    async fn close(&self) -> Result<(), BoxError> {
        self.channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        self.channel.close(200, "worker stopping".into()).await?;
        self.connection.close(200, "worker stopping".into()).await?;
        Ok(())
    }
}

/// The job id the producer put in `message_id`, if any.
fn job_id(delivery: &Delivery) -> Option<u64> {
    delivery.properties.message_id().as_ref()?.as_str().parse().ok()
}

/// Settles a delivery: ack, nack with requeue, or reject without requeue
/// (dead-lettered).
async fn finish(delivery: &Delivery, outcome: Outcome) -> Result<Outcome, BoxError> {
    match outcome {
        Outcome::Done => delivery.ack(BasicAckOptions::default()).await?,
        Outcome::Requeued(_) => {
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            delivery.nack(requeue).await?
        }
        Outcome::Dead(_) => delivery.reject(BasicRejectOptions { requeue: false }).await?,
    };
    Ok(outcome)
}

/// One worker process of the pool.
struct RabbitWorker {
    consumer: Consumer,
    wait_timeout: Duration,
    /// When the backlog was last reported (at most once a second: one
    /// round trip, not one per job).
    reported: Option<Instant>,
}

impl RabbitWorker {
    /// Reports the queue's ready messages for `workers.mode = "backlog"`.
    async fn report_backlog(&mut self, ctx: &Context<Self>) -> Result<(), BoxError> {
        if self
            .reported
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.reported = Some(Instant::now());
        ctx.report_backlog(self.consumer.backlog().await?);
        Ok(())
    }
}

impl AsyncWorker for RabbitWorker {
    type Settings = Settings;
    type Args = Args;

    async fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        let s = ctx.settings();
        let consumer = Consumer::connect(s, ctx.name()).await?;
        info!(
            "consuming {:?} (prefetch {}) as {}; results in {}",
            s.queue,
            s.prefetch,
            consumer.tag,
            consumer.results.path().display()
        );
        Ok(RabbitWorker {
            consumer,
            wait_timeout: s.wait_timeout,
            reported: None,
        })
    }

    async fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        self.report_backlog(ctx).await?;
        let stop = ctx.stop_handle();
        // A delivery; or idle after wait_timeout, or at once on a stop
        // request (`next` is cancel-safe: no delivery is lost).
        let delivery = tokio::select! {
            delivery = self.consumer.next() => delivery?,
            () = stop.stopped() => return Ok(Step::Idle),
            () = tokio::time::sleep(self.wait_timeout) => return Ok(Step::Idle),
        };
        // From here the job is finished even if a stop is requested.
        ctx.begin_job();
        Ok(match self.consumer.handle(&delivery).await? {
            Outcome::Done => Step::Worked,
            Outcome::Requeued(why) | Outcome::Dead(why) => Step::Failed(why.into()),
        })
    }

    async fn cleanup(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = self.consumer.close().await {
            warn!("cannot close the connection cleanly: {e}");
        }
        debug!("disconnected after {} jobs", ctx.jobs());
    }
}

/// A current-thread runtime with I/O and timers, for the bare loop (each
/// worker of the pool gets one from rookery).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// The bare loop's consumer and its runtime.
struct Bare {
    runtime: tokio::runtime::Runtime,
    consumer: Consumer,
    wait_timeout: Duration,
}

/// `--bare`: the consumer loop alone, in this process, for `run_for`.
fn bare(config: Option<&Path>, run_for: Duration) -> ExitCode {
    queue_job::run_bare(
        "rabbitmq_worker",
        config,
        run_for,
        |s: &Settings| {
            let runtime = runtime()?;
            let consumer = runtime.block_on(Consumer::connect(s, "rabbitmq_worker-bare"))?;
            Ok(Bare {
                runtime,
                consumer,
                wait_timeout: s.wait_timeout,
            })
        },
        |b: &mut Bare| {
            // One `block_on` per job, as a pool worker's `run` is.
            let (wait, consumer) = (b.wait_timeout, &mut b.consumer);
            b.runtime.block_on(async {
                let Ok(delivery) = tokio::time::timeout(wait, consumer.next()).await else {
                    return Ok(false);
                };
                consumer.handle(&delivery?).await.map(|_| true)
            })
        },
        |b| b.runtime.block_on(b.consumer.close()),
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
    rookery::Daemon::<RabbitWorker>::new("rabbitmq_worker")
        .version(env!("CARGO_PKG_VERSION"))
        .build_id(&build())
        .about("A pool of RabbitMQ consumers (rookery example)")
        .run()
}
