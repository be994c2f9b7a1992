//! Async workers (the `tokio` feature): the worker API as async functions,
//! on a tokio runtime that each worker process builds for itself after the
//! fork.
//!
//! The parent never starts a runtime (it never starts a thread: forking
//! without exec is sound only from a single-threaded process). Each worker
//! builds one in `init`, before [`AsyncWorker::init`]: current-thread by
//! default, or whatever [`AsyncWorker::runtime`] returns. The worker loop
//! is the one sync workers have (stop and parent checks, heartbeats, job
//! counts, delays, title): every type implementing [`AsyncWorker`] is a
//! [`Worker`] whose `init`, `run` and `cleanup` block on the async ones,
//! and whose delays between calls keep the runtime running, so tasks the
//! worker spawned go on meanwhile.
//!
//! Tasks cannot hold the [`Context`] (the loop owns it between calls):
//! they hold a [`StopHandle`] and a [`JobReporter`], both cheap to clone,
//! `Send` and `Sync`.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::runtime::Runtime;
use tracing::{info, warn};

use crate::scoreboard::Cell;
use crate::worker::{error_chain, Jobs};
use crate::{BoxError, Context, Step, Worker};

/// A worker whose `init`, `run` and `cleanup` are async (the `tokio`
/// feature). Every `AsyncWorker` is a [`Worker`]: start it with
/// [`run`](crate::run) or [`Daemon`](crate::Daemon) from a plain
/// `fn main` (not `#[tokio::main]`: the parent must stay single-threaded;
/// each worker process builds its own runtime).
///
/// `run` handles one job, as [`Worker::run`] does, and its [`Step`] means
/// the same. A `run` that waits for a job should also wait for
/// [`StopHandle::stopped`] and return [`Step::Idle`] when it fires.
///
/// To handle several jobs at once, spawn each on the runtime with its
/// [`Job`] (from [`JobReporter::begin`] when it is taken; the task ends it
/// with `done` or `failed`) and return [`Step::Spawned`] from `run` (the
/// job is counted when it ends, not by the loop); bound the concurrency yourself (a
/// semaphore, the broker's prefetch), so that `run` waits while the worker
/// is full. The worker shows busy while any job is in hand, and a graceful
/// stop waits for every job begun and not yet done before `cleanup` (up
/// to `workers.stop_timeout`, after which the worker is killed).
///
/// Available with the `tokio` feature.
pub trait AsyncWorker: Sized + 'static {
    /// The daemon's own settings, as [`Worker::Settings`].
    type Settings: serde::de::DeserializeOwned + Default + Clone + std::fmt::Debug + 'static;
    /// The daemon's own command-line options, as [`Worker::Args`].
    type Args: clap::Args + Clone + std::fmt::Debug + 'static;

    /// Builds this worker process's runtime, before `init`. The default is
    /// a current-thread runtime with I/O and timers; override it for a
    /// multi-thread one (for instance with a thread count from your
    /// `[app]` settings). A runtime you build must enable I/O and timers
    /// (`enable_all`): the stop handle and the delays between jobs use
    /// them. An error is an `init` failure.
    fn runtime(_ctx: &Context<Self>) -> std::io::Result<Runtime> {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    }

    /// As [`Worker::init`]: connect here, in the worker process.
    fn init(ctx: &mut Context<Self>) -> impl Future<Output = Result<Self, BoxError>>;

    /// As [`Worker::run`]: handles one job (or starts jobs on tasks).
    /// Return [`Step::Failed`] for a job that failed when the worker can
    /// carry on, and `Err` only for what it cannot recover from.
    fn run(&mut self, ctx: &mut Context<Self>) -> impl Future<Output = Result<Step, BoxError>>;

    /// As [`Worker::cleanup`]: runs once before the worker exits, after
    /// the jobs in hand have ended (on a graceful stop).
    fn cleanup(&mut self, _ctx: &mut Context<Self>) -> impl Future<Output = ()> {
        async {}
    }
}

impl<A: AsyncWorker> Worker for A {
    type Settings = A::Settings;
    type Args = A::Args;

    fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        let rt = A::runtime(ctx).map_err(|e| format!("cannot build the tokio runtime: {e}"))?;
        let worker = rt.block_on(A::init(ctx));
        ctx.runtime = Some(rt);
        worker
    }

    fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        let rt = ctx.runtime.take().ok_or("the async worker has no runtime")?;
        let step = rt.block_on(A::run(self, ctx));
        ctx.runtime = Some(rt);
        step
    }

    fn cleanup(&mut self, ctx: &mut Context<Self>) {
        let Some(rt) = ctx.runtime.take() else {
            return;
        };
        if ctx.stopping() {
            let jobs = ctx.jobs_shared().clone();
            if jobs.in_hand() > 0 {
                info!("stopping: waiting for {} job(s) in hand", jobs.in_hand());
                rt.block_on(none_in_hand(&jobs));
            }
        }
        rt.block_on(A::cleanup(self, ctx));
        // Tasks still running are dropped; a blocking task gets a moment.
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Returns once no job is in hand.
async fn none_in_hand(jobs: &Jobs) {
    loop {
        let mut notified = std::pin::pin!(jobs.none_in_hand.notified());
        // Registered before the count is read, so no wake-up is missed.
        notified.as_mut().enable();
        if jobs.in_hand() == 0 {
            return;
        }
        notified.await;
    }
}

/// The loop's delay between calls (`idle_delay`, `iteration_delay`): the
/// runtime runs meanwhile, and a stop request ends the delay.
pub(crate) fn delay<W: Worker>(rt: &Runtime, ctx: &Context<W>, d: Duration) {
    let stop = ctx.stop_handle();
    rt.block_on(async {
        let _ = tokio::time::timeout(d, stop.stopped()).await;
    });
}

/// A stop request, and the pool's pause, for tasks to hold: cheap to
/// clone, `Send` and `Sync`. From [`Context::stop_handle`].
///
/// A task that takes jobs on its own (a consumer stream) checks
/// [`StopHandle::paused`] before it takes the next one, and waits for
/// [`StopHandle::resumed`] while paused; `run` itself is not called while
/// the pool is paused.
///
/// Available with the `tokio` feature.
#[derive(Clone)]
pub struct StopHandle {
    inner: Arc<StopInner>,
}

struct StopInner {
    flag: Arc<AtomicBool>,
    /// This worker's scoreboard cell: its pause flag.
    cell: &'static Cell,
    /// A duplicate of the pool's pause eventfd (readable while open).
    gate: Option<OwnedFd>,
    /// `gate`'s own duplicate, registered on first use.
    gate_watched: OnceLock<Option<AsyncFd<OwnedFd>>>,
    /// A duplicate of the worker's stop descriptor (a pipe the signal
    /// handler writes to after it raised the flag), owned here.
    fd: Option<OwnedFd>,
    /// `fd`'s own duplicate, registered with the runtime on first use
    /// (registration needs the runtime's context); `None` if that failed.
    watched: OnceLock<Option<AsyncFd<OwnedFd>>>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle")
            .field("stopped", &self.is_stopped())
            .field("paused", &self.paused())
            .finish()
    }
}

impl StopHandle {
    /// Whether a stop was requested (the parent asked, or died).
    pub fn is_stopped(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// Returns once a stop is requested (at once if it already was). Use
    /// it in `tokio::select!` beside the wait for the next job.
    pub async fn stopped(&self) {
        if self.is_stopped() {
            return;
        }
        let watched = self.inner.watched.get_or_init(|| {
            // AsyncFd takes ownership: it gets its own duplicate.
            let fd = self.inner.fd.as_ref()?.try_clone().ok()?;
            match crate::sys::async_fd::watch_readable(fd) {
                Ok(a) => Some(a),
                Err(e) => {
                    warn!("cannot watch the stop descriptor ({e}); checking the flag every 50ms");
                    None
                }
            }
        });
        // The pipe is written only after the flag is raised, and never
        // drained: readable means stopped.
        if let Some(fd) = watched {
            loop {
                match fd.readable().await {
                    Ok(mut ready) if !self.is_stopped() => ready.clear_ready(),
                    Ok(_) => return,
                    Err(_) => break,
                }
            }
        }
        while !self.is_stopped() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the pool is paused (`pause`, SIGTSTP): take no new job
    /// until it is resumed. A memory load.
    pub fn paused(&self) -> bool {
        self.inner.cell.paused()
    }

    /// Returns once the pool is not paused (at once if it is not), or a
    /// stop is requested: check [`StopHandle::is_stopped`] after it.
    pub async fn resumed(&self) {
        loop {
            if !self.paused() || self.is_stopped() {
                return;
            }
            let watched = self.inner.gate_watched.get_or_init(|| {
                let fd = self.inner.gate.as_ref()?.try_clone().ok()?;
                crate::sys::async_fd::watch_readable(fd)
                    .map_err(|e| warn!("cannot watch the pause descriptor ({e}); checking every 50ms"))
                    .ok()
            });
            let Some(gate) = watched else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // The parent lowers the flags before it makes the eventfd
            // readable: readable with the flag still up means paused again
            // since, so wait for the next resume.
            let mut open = std::pin::pin!(gate.readable());
            let mut stop = std::pin::pin!(self.stopped());
            let woken = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = open.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                stop.as_mut().poll(cx).map(|()| None)
            })
            .await;
            match woken {
                Some(Ok(mut ready)) if self.paused() => ready.clear_ready(),
                Some(Ok(_)) | None => return,
                Some(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// The loop's wait while the pool is paused: the runtime runs meanwhile
/// (the jobs in hand go on), with a heartbeat every `period`. Returns
/// `false` if a stop ended it, `true` once resumed.
pub(crate) fn hold<W: Worker>(rt: &Runtime, ctx: &Context<W>, period: Duration) -> bool {
    let handle = ctx.stop_handle();
    let jobs = ctx.jobs_shared().clone();
    rt.block_on(async {
        while handle.paused() && !handle.is_stopped() {
            let _ = tokio::time::timeout(period, handle.resumed()).await;
            jobs.beat();
        }
    });
    !handle.is_stopped()
}

/// Reports jobs from tasks: cheap to clone, `Send` and `Sync`. From
/// [`Context::reporter`].
///
/// [`JobReporter::begin`] when a job is taken gives a [`Job`], which the
/// task ends with [`Job::done`] or [`Job::failed`]. The worker is busy (in
/// `status` and the process title) while any job is in hand; each job is
/// counted once (ending a job consumes it), and `workers.max_jobs` applies
/// to the total.
///
/// Available with the `tokio` feature.
#[derive(Clone)]
pub struct JobReporter {
    jobs: Arc<Jobs>,
}

impl std::fmt::Debug for JobReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobReporter")
            .field("in_hand", &self.jobs.in_hand())
            .finish()
    }
}

impl JobReporter {
    /// A job is in hand: the worker is busy until the [`Job`] ends.
    pub fn begin(&self) -> Job {
        self.jobs.begin();
        Job {
            jobs: self.jobs.clone(),
            ended: false,
        }
    }

    /// A sign of life during a long job (`workers.heartbeat_timeout`); a
    /// plain memory write.
    pub fn heartbeat(&self) {
        self.jobs.beat();
    }
}

/// A job in hand, from [`JobReporter::begin`]: end it with [`Job::done`]
/// or [`Job::failed`]. Dropped without either (its task panicked, or was
/// cancelled), it ends uncounted, with a warning, so that the worker does
/// not stay busy, nor a graceful stop wait, for a job nobody holds.
#[must_use = "a job ends when it is dropped: keep it until the work is done"]
pub struct Job {
    jobs: Arc<Jobs>,
    ended: bool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl Job {
    /// The job ended well: counted; the worker is idle if no other job is
    /// in hand.
    pub fn done(mut self) {
        self.ended = true;
        self.jobs.end(true);
    }

    /// The job failed and the worker carries on: the error is logged at
    /// warning, and the job counted as [`Job::done`] would.
    pub fn failed(mut self, error: impl Into<BoxError>) {
        warn!("job failed: {}", error_chain(&*error.into()));
        self.ended = true;
        self.jobs.end(true);
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if !self.ended {
            warn!("a job ended without done or failed (its task panicked or was dropped); not counted");
            self.jobs.end(false);
        }
    }
}

impl<W: Worker> Context<W> {
    /// A handle on the stop request that tasks can hold (the `tokio`
    /// feature).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop_handle
            .get_or_init(|| {
                let stop = self.stop_signal();
                let (gate, cell) = self.gate();
                StopHandle {
                    inner: Arc::new(StopInner {
                        flag: stop.shared_flag(),
                        cell,
                        gate: gate.fd().try_clone_to_owned().ok(),
                        gate_watched: OnceLock::new(),
                        // A dup failing (EMFILE) leaves the flag, polled.
                        fd: stop.fd().try_clone_to_owned().ok(),
                        watched: OnceLock::new(),
                    }),
                }
            })
            .clone()
    }

    /// A job reporter that tasks can hold (the `tokio` feature).
    pub fn reporter(&self) -> JobReporter {
        JobReporter {
            jobs: self.jobs_shared().clone(),
        }
    }
}
