//! The worker API, and the loop that drives a worker inside its process.
//!
//! A worker is a type implementing [`Worker`]. In each forked worker
//! process the framework calls [`Worker::init`] once (open connections
//! here: nothing opened in the parent is assumed usable), then
//! [`Worker::run`] again and again, one job or one batch per call, and
//! [`Worker::cleanup`] once at the end. Between two calls the loop checks
//! for a stop request and for the parent's death, applies the configured
//! delays, records a heartbeat and refreshes the process title.

use std::fmt::Debug;
use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::exit;
use crate::message::WorkerMsg;
use crate::scoreboard::{Activity, Cell};
use crate::signals::{self, StopSignal};
use crate::titles;

/// Any error a worker returns; it is logged with its sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What one call of [`Worker::run`] did.
#[derive(Debug)]
pub enum Step {
    /// Handled a job (counted, unless the worker already reported it with
    /// [`Context::job_done`] during this call).
    Worked,
    /// Handled a job that failed, and the worker can carry on (a payload it
    /// cannot parse, a request the remote end refused): the error is logged
    /// at warning, the job is counted like [`Step::Worked`], and the worker
    /// keeps running. Return `Err` only for what the worker cannot recover
    /// from (a lost connection): that ends the worker, which is restarted.
    Failed(BoxError),
    /// Started a job that goes on elsewhere (a task, a thread) and reports
    /// through a [`JobReporter`](crate::JobReporter) when it ends: not
    /// counted here, and no `idle_delay`; the loop calls `run` again.
    Spawned,
    /// Found nothing to do; the loop waits `workers.idle_delay` (if set)
    /// before the next call.
    Idle,
    /// The worker wants to exit cleanly (it is restarted per the policy).
    Exit,
}

/// A worker type. See the [crate documentation](crate) for an example.
pub trait Worker: Sized + 'static {
    /// The daemon's own settings: the `[app]` table of the config file,
    /// deserialized with serde. Use [`NoSettings`] for none.
    type Settings: DeserializeOwned + Default + Clone + Debug + 'static;
    /// The daemon's own command-line options, flattened next to the
    /// framework's. Use [`crate::cli::NoArgs`] for none.
    ///
    /// They are accepted wherever rookery's are: before the subcommand
    /// (every subcommand then takes them), and after `start`, `restart`,
    /// `run` and the `write-*` commands, whose `--help` lists them; the
    /// generated unit and init script start the daemon with them. Options
    /// only (`--tag v2`), no positional arguments. These names are
    /// rookery's, and a daemon that uses one fails at once with an error
    /// naming both options: `-c`, `--config`, `-n`, `--no-daemon`, `-l`,
    /// `--loglevel`, `-w`, `--workers`, `--name`, `--pidfile`, `--logfile`,
    /// `--write-init`, `-h`, `--help`, `-V`, `--version`, `--timeout`
    /// (`restart`), `-o`, `--output`, `--stdout`, `--force` (`write-*`).
    type Args: clap::Args + Clone + Debug + 'static;

    /// Runs once in the new worker process, before any job: connect to the
    /// queue or database here. An error is a worker failure (logged; the
    /// worker is restarted with back-off; at startup, the start fails).
    fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError>;

    /// Handles one job (or one batch). Called again and again until a stop
    /// is requested. A call may block (waiting for a job), preferably with a
    /// timeout, or by polling [`Context::stop_fd`], so that a stop request is
    /// noticed. An error ends the worker with a failure (it is restarted),
    /// except after a stop request: the stop signal interrupts blocking
    /// calls (a socket read with a timeout fails with `EINTR`), so an error
    /// then ends the worker normally (logged at info, exit status 0).
    fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError>;

    /// Runs once before the worker exits normally.
    fn cleanup(&mut self, _ctx: &mut Context<Self>) {}
}

/// Settings type for a daemon without an `[app]` table.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

/// What a worker knows about itself and the daemon, and how it reports.
pub struct Context<W: Worker> {
    slot: u32,
    id: u64,
    name: String,
    settings: W::Settings,
    args: W::Args,
    config: Config,
    parent: Pid,
    stop: StopSignal,
    cell: &'static Cell,
    /// Job accounting, shared with the [`JobReporter`](crate::JobReporter)s
    /// of async workers.
    jobs: Arc<Jobs>,
    /// Whether [`Context::begin_job`] marked a job in hand that this
    /// context has not reported yet.
    ctx_job: bool,
    reported_in_call: bool,
    started: SystemTime,
    title_at: Instant,
    rss: u64,
    /// The title up to the memory figure (see [`titles::worker_title_head`]).
    title_head: String,
    /// The async worker's runtime, built in this process by
    /// [`AsyncWorker::runtime`](crate::AsyncWorker::runtime).
    #[cfg(feature = "tokio")]
    pub(crate) runtime: Option<tokio::runtime::Runtime>,
    /// Made on first use (`Context::stop_handle`), then shared.
    #[cfg(feature = "tokio")]
    pub(crate) stop_handle: std::sync::OnceLock<crate::StopHandle>,
    /// issue 11: whether the pool is paused, and the wake-up for resume.
    gate: crate::intake::Gate,
}

/// How many jobs a worker has in hand and has done: the scoreboard's
/// busy/idle and job count, kept truthful when several jobs run at once
/// (async workers report from their tasks through a
/// [`JobReporter`](crate::JobReporter)). Busy while any job is in hand.
pub(crate) struct Jobs {
    cell: &'static Cell,
    in_flight: AtomicUsize,
    max_jobs: u64,
    recycle_asked: AtomicBool,
    to_parent: std::fs::File,
    /// Woken when the last job in hand ends (the graceful stop waits).
    #[cfg(feature = "tokio")]
    pub(crate) none_in_hand: tokio::sync::Notify,
}

impl Jobs {
    /// A job is in hand: busy (unless already stopping).
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.cell.activity() != Activity::Stopping {
            self.cell.set(Activity::Busy);
        }
    }

    /// A job in hand ended; counted if `counted`. Idle once none is left.
    pub(crate) fn end(&self, counted: bool) {
        let before = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_sub(1)))
            .unwrap_or(0);
        if counted {
            self.count();
        } else {
            self.idle_if_none();
        }
        if before <= 1 {
            #[cfg(feature = "tokio")]
            self.none_in_hand.notify_waiters();
        }
    }

    /// Counts one job done (without a job in hand to end).
    pub(crate) fn count(&self) {
        let n = self.cell.add_jobs(1);
        self.idle_if_none();
        if self.max_jobs > 0 && n >= self.max_jobs && !self.recycle_asked.swap(true, Ordering::SeqCst) {
            info!("max_jobs reached ({n} jobs); asking for a replacement");
            self.tell_parent(&WorkerMsg::Recycle { jobs: n });
        }
    }

    /// Jobs in hand.
    pub(crate) fn in_hand(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn idle_if_none(&self) {
        if self.in_hand() == 0 && self.cell.activity() == Activity::Busy {
            self.cell.set(Activity::Idle);
        }
    }

    /// Records a sign of life.
    #[cfg(feature = "tokio")]
    pub(crate) fn beat(&self) {
        self.cell.beat();
    }

    fn tell_parent(&self, msg: &WorkerMsg) {
        // One write of at most PIPE_BUF bytes is atomic: lines from many
        // workers (and many tasks of one) never mix.
        let line = msg.encode(nix::unistd::getpid());
        let _ = (&self.to_parent).write(line.as_bytes());
    }
}

impl<W: Worker> Context<W> {
    /// This worker's slot, 1 to the number of workers.
    pub fn slot(&self) -> u32 {
        self.slot
    }
    /// An id unique to this worker process within the daemon's life.
    pub fn worker_id(&self) -> u64 {
        self.id
    }
    /// The daemon's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The `[app]` settings.
    pub fn settings(&self) -> &W::Settings {
        &self.settings
    }
    /// The daemon's own command-line options.
    pub fn args(&self) -> &W::Args {
        &self.args
    }
    /// The whole configuration in force when this worker started.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Whether the worker should stop: the parent asked (or died).
    pub fn should_stop(&self) -> bool {
        self.stop.requested()
    }
    /// A descriptor that becomes readable when a stop is requested, for
    /// workers that wait in `poll`/`epoll` or an async runtime.
    pub fn stop_fd(&self) -> BorrowedFd<'_> {
        self.stop.fd()
    }
    /// Whether the pool is paused (`pause`, SIGTSTP): take no new job.
    /// The framework already stops calling [`Worker::run`] while it is
    /// paused; this is for code that takes jobs on its own (an async
    /// runtime's tasks, a long batch) and for waits inside `run`. A memory
    /// load, cheap enough for every job.
    pub fn paused(&self) -> bool {
        self.gate.paused()
    }
    /// A descriptor that is readable while the pool is open and not while
    /// it is paused: a paused worker waits for it (with [`Context::stop_fd`])
    /// in `poll`/`epoll` or an async runtime. Check [`Context::paused`]
    /// again after it wakes (a pause may have followed the resume).
    pub fn resume_fd(&self) -> BorrowedFd<'_> {
        self.gate.fd()
    }
    /// Sleeps up to `d`, waking early on a stop request. Returns `false` if
    /// woken by a stop request.
    pub fn sleep(&self, d: Duration) -> bool {
        if self.should_stop() {
            return false;
        }
        let mut fds = [PollFd::new(self.stop.fd(), PollFlags::POLLIN)];
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return !self.should_stop();
            }
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let _ = poll(
                &mut fds,
                PollTimeout::try_from(ms.max(1)).unwrap_or(PollTimeout::MAX),
            );
            if self.should_stop() {
                return false;
            }
        }
    }
    /// Records a sign of life (no system call). Call it during long jobs
    /// when `workers.heartbeat_timeout` is set.
    pub fn heartbeat(&self) {
        self.cell.beat();
    }
    /// Marks the worker busy with a job (shown by `status` and the title).
    pub fn begin_job(&mut self) {
        self.cell.set_label(None);
        self.ctx_begin();
    }
    /// [`Context::begin_job`] for a job with a label (its id, say): the
    /// parent shows it in `status` (`job`) and in the lines it logs about
    /// the job (`slow_job`, `job_timeout`, a hang). The label goes to the
    /// shared scoreboard with plain memory writes (no system call); at most
    /// 112 bytes are kept (the scoreboard's `LABEL_MAX`).
    pub fn begin_job_labeled(&mut self, label: &str) {
        self.cell
            .set_label(Some(&crate::scoreboard::JobLabel::new(label)));
        self.ctx_begin();
    }
    /// The job this context marked is in hand (once per job).
    fn ctx_begin(&mut self) {
        if !self.ctx_job {
            self.ctx_job = true;
            self.jobs.begin();
        }
        self.refresh_title(false);
    }
    /// Reports one finished job: counts it, marks the worker idle (unless
    /// other jobs are in hand), and asks the parent for a replacement once
    /// `workers.max_jobs` is reached.
    pub fn job_done(&mut self) {
        self.reported_in_call = true;
        if std::mem::take(&mut self.ctx_job) {
            self.jobs.end(true);
        } else {
            self.jobs.count();
        }
        self.refresh_title(false);
    }
    /// Ends the job [`Context::begin_job`] marked, uncounted (the call
    /// returned without reporting it).
    fn drop_ctx_job(&mut self) {
        if std::mem::take(&mut self.ctx_job) {
            self.jobs.end(false);
        }
    }
    /// Reports how many jobs are waiting in the queue, as this worker sees
    /// it (Beanstalkd's `current-jobs-ready`, a Redis list's `LLEN`, a
    /// RabbitMQ queue's message count). With `workers.mode = "backlog"`
    /// the parent sizes the pool on it. A plain memory write: call it as
    /// often as the figure is cheap to get (once a second is plenty).
    pub fn report_backlog(&self, n: u64) {
        self.cell.report_backlog(n);
    }
    /// Jobs done so far by this process.
    pub fn jobs(&self) -> u64 {
        self.cell.jobs()
    }

    /// issue 11: while the pool is paused, takes no job: waits for resume
    /// or stop without spinning, beating so it is never taken for hung.
    fn hold(&mut self) {
        self.cell.set(Activity::Paused);
        self.refresh_title(false);
        debug!("paused: taking no new job until resumed");
        let h = self.config.workers.heartbeat_timeout;
        // Often enough for the heartbeat check; at least once a second
        // (the parent's death also wakes it, through the stop descriptor).
        let period = if h.is_zero() {
            Duration::from_secs(1)
        } else {
            (h / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
        };
        let cell = self.cell;
        // An async worker's runtime keeps running meanwhile: the jobs in
        // hand on its tasks go on to their end.
        #[cfg(feature = "tokio")]
        let resumed = match self.runtime.take() {
            Some(rt) => {
                let resumed = crate::async_worker::hold(&rt, self, period);
                self.runtime = Some(rt);
                resumed
            }
            None => self.gate.wait(&self.stop, period, || cell.beat()),
        };
        #[cfg(not(feature = "tokio"))]
        let resumed = self.gate.wait(&self.stop, period, || cell.beat());
        if resumed {
            debug!("resumed");
            let busy = self.jobs.in_hand() > 0;
            self.cell.set(if busy { Activity::Busy } else { Activity::Idle });
            self.refresh_title(false);
        }
    }

    /// The pause gate and the scoreboard cell (the async stop handle).
    #[cfg(feature = "tokio")]
    pub(crate) fn gate(&self) -> (&crate::intake::Gate, &'static Cell) {
        (&self.gate, self.cell)
    }

    fn tell_parent(&self, msg: &WorkerMsg) {
        self.jobs.tell_parent(msg);
    }

    /// The shared job accounting (for the async worker's reporter).
    #[cfg(feature = "tokio")]
    pub(crate) fn jobs_shared(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// The stop request's flag and descriptor.
    #[cfg(feature = "tokio")]
    pub(crate) fn stop_signal(&self) -> &StopSignal {
        &self.stop
    }

    /// Whether the loop has ended normally (a stop, `Step::Exit`): the
    /// worker is finishing the jobs in hand, not failing.
    #[cfg(feature = "tokio")]
    pub(crate) fn stopping(&self) -> bool {
        self.cell.activity() == Activity::Stopping
    }

    /// The loop's delays between calls: an async worker's runtime keeps
    /// running its tasks meanwhile.
    fn delay(&mut self, d: Duration) {
        #[cfg(feature = "tokio")]
        if let Some(rt) = self.runtime.take() {
            crate::async_worker::delay(&rt, self, d);
            self.runtime = Some(rt);
            return;
        }
        self.sleep(d);
    }

    fn refresh_title(&mut self, reread: bool) {
        let due = self.title_at.elapsed() >= self.config.workers.title_interval;
        if reread || due || self.title_head.is_empty() {
            self.rss = titles::rss_bytes(None).unwrap_or(self.rss);
            self.title_at = Instant::now();
            // Formatting the time and size costs more than the rest of a
            // trivial job's bookkeeping: done only when the size is re-read.
            self.title_head = titles::worker_title_head(&self.name, self.slot, self.started, self.rss);
        }
        let busy = self.cell.activity() == Activity::Busy;
        let title = titles::worker_title_from_head(&self.title_head, self.cell.jobs(), busy);
        if self.cell.activity() == Activity::Paused {
            // issue 11: `ps` shows it waiting for `resume`.
            let head = title.strip_suffix(" idle").unwrap_or(&title);
            titles::set(&format!("{head} paused"));
        } else {
            titles::set(&title);
        }
    }
}

/// Everything a freshly forked worker needs, prepared before the fork.
pub(crate) struct ChildSetup<'a, W: Worker> {
    pub slot: u32,
    pub id: u64,
    pub config: &'a Config,
    pub settings: &'a W::Settings,
    pub args: &'a W::Args,
    pub parent: Pid,
    pub cell: &'static Cell,
    pub to_parent: &'a OwnedFd,
    pub close: &'a [RawFd],
    pub max_jobs: u64,
    pub intake: BorrowedFd<'a>,
}

/// The worker process's life. Never returns.
pub(crate) fn child_main<W: Worker>(setup: ChildSetup<'_, W>) -> ! {
    let code = std::panic::catch_unwind(AssertUnwindSafe(|| child_life::<W>(setup))).unwrap_or(101);
    std::process::exit(code)
}

fn child_life<W: Worker>(s: ChildSetup<'_, W>) -> i32 {
    let name = s.config.daemon.name.clone();
    crate::logging::set_role(&format!("worker {}", s.slot));
    for fd in s.close {
        let _ = nix::unistd::close(*fd);
    }
    // issue 13: nice, OOM score and resource limits before the privilege
    // drop below: a lower nice value, a lower OOM score and a hard limit
    // above the parent's all need the privileges the worker still has here.
    if let Err((step, errno)) = crate::limits::for_workers(&s.config.workers).apply() {
        let e = crate::limits::failure(step, errno);
        error!("{e}");
        let line = WorkerMsg::Failed(e).encode(nix::unistd::getpid());
        let _ = nix::unistd::write(s.to_parent, line.as_bytes());
        return exit::WORKER_SETUP_FAILED;
    }
    // issue 9: the parent keeps its privileges; a worker gives them up for
    // good before it runs any worker code, and before PR_SET_PDEATHSIG
    // below (a credential change clears it).
    if let Err(e) = crate::privileges::become_worker(crate::privileges::workers()) {
        error!("{e}");
        let line = WorkerMsg::Failed(e.to_string()).encode(nix::unistd::getpid());
        let _ = nix::unistd::write(s.to_parent, line.as_bytes());
        return exit::WORKER_SETUP_FAILED;
    }
    // issue 13: the configured env_file and env, over the parent's (and the
    // login) variables. Sound: this process was just forked from the
    // single-threaded parent and has started no thread, so nothing reads
    // the environment while it changes (set_var is `unsafe` from edition
    // 2024 for that reason; this crate is edition 2021).
    for (k, v) in s.config.workers.extra_env() {
        std::env::set_var(k, v);
    }
    // The parent's handlers and mask are not ours.
    if signals::unblock_all().is_err() {
        return exit::WORKER_SETUP_FAILED;
    }
    let w = &s.config.workers;
    let grace = w.stop_timeout.as_secs().max(1).min(u32::MAX as u64) as u32;
    // issue 11: a worker replaced by `upgrade` may take
    // `upgrade_drain_timeout` to finish its job (the parent sends SIGKILL
    // at that deadline): the backstop of a stop the live parent asked for
    // must not fire before it; an orphan's still does after stop_timeout.
    let drain = w.stop_timeout.max(w.upgrade_drain_timeout);
    let drain = (
        s.parent.as_raw(),
        drain.as_secs().max(1).min(u32::MAX as u64) as u32,
    );
    let mut stops = vec![Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];
    if !stops.contains(&w.stop_signal) {
        stops.push(w.stop_signal);
    }
    let stop = match StopSignal::install(&stops, grace, Some(drain)) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return exit::WORKER_SETUP_FAILED;
        }
    };
    // The parent does not send SIGUSR1 to reopen logs (the log writer
    // watches a shared reopen generation instead, so no system call of the
    // worker's is interrupted); a SIGUSR1 sent by hand still reopens
    // rather than killing the worker.
    let _ = signal_hook::flag::register(Signal::SIGUSR1 as i32, crate::logging::reopen_flag());
    let _ = signal_hook::flag::register(Signal::SIGHUP as i32, std::sync::Arc::new(Default::default()));
    // issue 11: Ctrl-Z in a foreground run reaches the workers too; the
    // parent turns it into a pause, which workers see between two jobs.
    for s in [Signal::SIGTTIN, Signal::SIGTTOU, Signal::SIGTSTP] {
        let _ = signal_hook::flag::register(s as i32, std::sync::Arc::new(Default::default()));
    }
    // Die with the parent. Set after the credential change above (which
    // clears it), then close the race where the parent died before the
    // prctl.
    if nix::sys::prctl::set_pdeathsig(Some(w.stop_signal)).is_err() {
        return exit::WORKER_SETUP_FAILED;
    }
    if nix::unistd::getppid() != s.parent {
        return exit::WORKER_SETUP_FAILED;
    }
    let Ok(to_parent) = s.to_parent.try_clone() else {
        return exit::WORKER_SETUP_FAILED;
    };
    let Ok(intake) = s.intake.try_clone_to_owned() else {
        return exit::WORKER_SETUP_FAILED;
    };
    s.cell.reset(std::process::id() as i32);
    titles::set_comm(&name);

    let mut ctx = Context::<W> {
        slot: s.slot,
        id: s.id,
        name,
        settings: s.settings.clone(),
        args: s.args.clone(),
        config: s.config.clone(),
        parent: s.parent,
        stop,
        cell: s.cell,
        jobs: Arc::new(Jobs {
            cell: s.cell,
            in_flight: AtomicUsize::new(0),
            max_jobs: s.max_jobs,
            recycle_asked: AtomicBool::new(false),
            to_parent: std::fs::File::from(to_parent),
            #[cfg(feature = "tokio")]
            none_in_hand: tokio::sync::Notify::new(),
        }),
        ctx_job: false,
        reported_in_call: false,
        started: SystemTime::now(),
        title_at: Instant::now(),
        rss: 0,
        title_head: String::new(),
        #[cfg(feature = "tokio")]
        runtime: None,
        #[cfg(feature = "tokio")]
        stop_handle: std::sync::OnceLock::new(),
        gate: crate::intake::Gate::new(s.cell, intake),
    };
    ctx.refresh_title(true);
    let mut worker = match W::init(&mut ctx) {
        Ok(w) => w,
        Err(e) if ctx.should_stop() => {
            // As in `run` below: the stop interrupted what init was doing.
            info!(
                "stopping: init returned an error after the stop request: {}",
                error_chain(&*e)
            );
            return 0;
        }
        Err(e) => {
            let msg = error_chain(&*e);
            error!("init failed: {msg}");
            ctx.tell_parent(&WorkerMsg::Failed(msg));
            return exit::WORKER_INIT_FAILED;
        }
    };
    ctx.cell.set(Activity::Idle);
    ctx.tell_parent(&WorkerMsg::Ready);
    debug!("ready");
    ctx.refresh_title(true);

    let iteration_delay = ctx.config.workers.iteration_delay;
    let idle_delay = ctx.config.workers.idle_delay;
    // The parent's death raises the stop flag (PR_SET_PDEATHSIG); getppid()
    // is checked too, but at most every 100 ms, so a trivial job pays no
    // system call for it.
    let mut parent_checked = Instant::now();
    let code = loop {
        if ctx.should_stop() {
            break 0;
        }
        if parent_checked.elapsed() >= Duration::from_millis(100) {
            parent_checked = Instant::now();
            if nix::unistd::getppid() != ctx.parent {
                break 0;
            }
        }
        if ctx.gate.paused() {
            ctx.hold();
            continue;
        }
        ctx.reported_in_call = false;
        ctx.cell.beat();
        let step = worker.run(&mut ctx);
        if !matches!(step, Ok(Step::Worked | Step::Failed(_))) {
            ctx.drop_ctx_job();
        }
        match step {
            Ok(Step::Worked) => {
                if !ctx.reported_in_call {
                    ctx.job_done();
                }
            }
            Ok(Step::Failed(e)) => {
                // The job failed; the worker is fine and carries on.
                warn!("job failed: {}", error_chain(&*e));
                if !ctx.reported_in_call {
                    ctx.job_done();
                }
            }
            Ok(Step::Spawned) => {}
            Ok(Step::Idle) => {
                if !idle_delay.is_zero() {
                    ctx.delay(idle_delay);
                }
                if ctx.title_at.elapsed() >= ctx.config.workers.title_interval {
                    ctx.refresh_title(true);
                }
            }
            Ok(Step::Exit) => break 0,
            Err(e) if ctx.should_stop() => {
                // A stop request interrupts blocking calls (a read with
                // SO_RCVTIMEO fails with EINTR rather than restarting): an
                // error now is the stop doing its job, not a failure.
                info!(
                    "stopping: run returned an error after the stop request: {}",
                    error_chain(&*e)
                );
                break 0;
            }
            Err(e) => {
                error!("run failed: {}", error_chain(&*e));
                worker.cleanup(&mut ctx);
                return 1;
            }
        }
        if !iteration_delay.is_zero() {
            ctx.delay(iteration_delay);
        }
    };
    ctx.cell.set(Activity::Stopping);
    worker.cleanup(&mut ctx);
    debug!("exiting after {} jobs", ctx.cell.jobs());
    let _ = std::io::stdout().flush();
    code
}

/// An error and its sources on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        // issue 9: an error that already shows its source (a `{source}` in
        // its format) must not make the line say it twice.
        let text = cause.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = cause.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod error_chain_tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("beanstalkd connect: {source}")]
    struct Shows {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("init failed")]
    struct Hides {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let refused = || std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let text = error_chain(&Shows { source: refused() });
        assert_eq!(text.matches("os error 111").count(), 1, "{text}");
        let text = error_chain(&Hides { source: refused() });
        assert!(
            text.starts_with("init failed: ") && text.contains("os error 111"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod jobs_tests {
    use super::*;
    use crate::scoreboard::Scoreboard;

    fn jobs(max_jobs: u64) -> (Jobs, std::fs::File) {
        let mut board = Scoreboard::new(1).expect("scoreboard");
        let i = board.claim().expect("a cell");
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).expect("pipe");
        let jobs = Jobs {
            cell: board.cell(i),
            in_flight: AtomicUsize::new(0),
            max_jobs,
            recycle_asked: AtomicBool::new(false),
            to_parent: std::fs::File::from(w),
            #[cfg(feature = "tokio")]
            none_in_hand: tokio::sync::Notify::new(),
        };
        jobs.cell.set(Activity::Idle);
        (jobs, std::fs::File::from(r))
    }

    #[test]
    fn busy_while_any_job_is_in_hand_and_each_counted_once() {
        let (j, _r) = jobs(0);
        j.begin();
        j.begin();
        j.begin();
        assert_eq!(j.cell.activity(), Activity::Busy);
        j.end(true);
        j.end(true);
        assert_eq!(
            (j.cell.activity(), j.cell.jobs(), j.in_hand()),
            (Activity::Busy, 2, 1)
        );
        // A job counted without being begun (`Step::Worked` alone) does
        // not end another's.
        j.count();
        assert_eq!(
            (j.cell.activity(), j.cell.jobs(), j.in_hand()),
            (Activity::Busy, 3, 1)
        );
        j.end(false);
        assert_eq!(
            (j.cell.activity(), j.cell.jobs(), j.in_hand()),
            (Activity::Idle, 3, 0)
        );
        // An extra end cannot go below zero, nor count twice.
        j.end(false);
        assert_eq!((j.in_hand(), j.cell.jobs()), (0, 3));
    }

    #[test]
    fn a_stopping_worker_stays_stopping_and_max_jobs_asks_once() {
        let (j, mut r) = jobs(2);
        j.begin();
        j.cell.set(Activity::Stopping);
        j.begin();
        j.end(true);
        j.end(true);
        j.end(true);
        assert_eq!(j.cell.activity(), Activity::Stopping);
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut r, &mut text);
        assert_eq!(text.lines().count(), 1, "one recycle request: {text:?}");
    }
}
