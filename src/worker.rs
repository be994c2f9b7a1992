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
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use tracing::{debug, error, info};

use crate::config::Config;
use crate::exit;
use crate::message::WorkerMsg;
use crate::scoreboard::{Activity, Cell};
use crate::signals::{self, StopSignal};
use crate::titles;

/// Any error a worker returns; it is logged with its sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What one call of [`Worker::run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Handled a job (counted, unless the worker already reported it with
    /// [`Context::job_done`] during this call).
    Worked,
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
    to_parent: std::fs::File,
    max_jobs: u64,
    recycle_asked: bool,
    reported_in_call: bool,
    started: SystemTime,
    title_at: Instant,
    rss: u64,
    /// The title up to the memory figure (see [`titles::worker_title_head`]).
    title_head: String,
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
        self.cell.set(Activity::Busy);
        self.refresh_title(false);
    }
    /// [`Context::begin_job`] for a job with a label (its id, say): the
    /// parent shows it in `status` (`job`) and in the lines it logs about
    /// the job (`slow_job`, `job_timeout`, a hang). The label goes to the
    /// shared scoreboard with plain memory writes (no system call); at most
    /// [`crate::scoreboard::LABEL_MAX`] bytes are kept.
    pub fn begin_job_labeled(&mut self, label: &str) {
        self.cell
            .set_label(Some(&crate::scoreboard::JobLabel::new(label)));
        self.cell.set(Activity::Busy);
        self.refresh_title(false);
    }
    /// Reports one finished job: counts it, marks the worker idle, and
    /// asks the parent for a replacement once `workers.max_jobs` is reached.
    pub fn job_done(&mut self) {
        self.reported_in_call = true;
        let n = self.cell.add_jobs(1);
        self.cell.set(Activity::Idle);
        if self.max_jobs > 0 && n >= self.max_jobs && !self.recycle_asked {
            self.recycle_asked = true;
            info!("max_jobs reached ({n} jobs); asking for a replacement");
            self.tell_parent(&WorkerMsg::Recycle { jobs: n });
        }
        self.refresh_title(false);
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

    fn tell_parent(&self, msg: &WorkerMsg) {
        // One write of at most PIPE_BUF bytes is atomic: lines from many
        // workers never mix.
        let line = msg.encode(nix::unistd::getpid());
        let _ = (&self.to_parent).write(line.as_bytes());
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
        titles::set(&titles::worker_title_from_head(
            &self.title_head,
            self.cell.jobs(),
            busy,
        ));
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
    let mut stops = vec![Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];
    if !stops.contains(&w.stop_signal) {
        stops.push(w.stop_signal);
    }
    let stop = match StopSignal::install(&stops, grace) {
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
    for s in [Signal::SIGTTIN, Signal::SIGTTOU] {
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
        to_parent: std::fs::File::from(to_parent),
        max_jobs: s.max_jobs,
        recycle_asked: false,
        reported_in_call: false,
        started: SystemTime::now(),
        title_at: Instant::now(),
        rss: 0,
        title_head: String::new(),
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
        ctx.reported_in_call = false;
        ctx.cell.beat();
        match worker.run(&mut ctx) {
            Ok(Step::Worked) => {
                if !ctx.reported_in_call {
                    ctx.job_done();
                }
            }
            Ok(Step::Idle) => {
                if ctx.cell.activity() == Activity::Busy {
                    ctx.cell.set(Activity::Idle);
                }
                if !idle_delay.is_zero() {
                    ctx.sleep(idle_delay);
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
            ctx.sleep(iteration_delay);
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
