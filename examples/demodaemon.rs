//! The demo daemon: the template to copy for a new rookery daemon.
//!
//! Each worker takes simulated jobs from the source configured in `[app]`
//! and logs what it does. It shows every part of the API: settings from the
//! config file, an option of the daemon's own on the command line, `init`
//! in the worker process, one job per `run`, waking early on a stop
//! request, finishing the job in hand before stopping, and `cleanup`.
//!
//! ```text
//! cargo run --release --example demodaemon -- --no-daemon
//! cargo run --release --example demodaemon -- -c examples/demodaemon.toml start
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rookery::{BoxError, Context, Step, Worker};
use serde::Deserialize;
use tracing::{debug, info};

/// The `[app]` table of the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Name of the simulated queue the jobs come from.
    queue: String,
    /// How often a job arrives for each worker.
    #[serde(with = "rookery::humantime")]
    job_interval: Duration,
    /// How long one job takes (the worker is busy, and finishes it even
    /// when asked to stop).
    #[serde(with = "rookery::humantime")]
    job_time: Duration,
    /// Make `init` fail (to see how a failed start is reported).
    fail_init: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue: "demo".into(),
            job_interval: Duration::from_secs(1),
            job_time: Duration::from_millis(100),
            fail_init: false,
        }
    }
}

/// The demo's own command-line options, next to rookery's.
#[derive(Debug, Clone, clap::Args)]
struct Args {
    /// Tag added to every job log line.
    #[arg(long, default_value = "demo")]
    tag: String,
}

/// One worker process.
struct Demo {
    queue: String,
    next_job: u64,
    connected_at: Instant,
}

impl Worker for Demo {
    type Settings = Settings;
    type Args = Args;

    fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        // Connections are opened here, in the worker process.
        let s = ctx.settings();
        if s.fail_init {
            return Err(format!("cannot connect to queue {:?}: fail_init is set", s.queue).into());
        }
        info!("connected to simulated queue {:?}", s.queue);
        Ok(Demo {
            queue: s.queue.clone(),
            next_job: ctx.slot() as u64 * 1_000_000,
            connected_at: Instant::now(),
        })
    }

    fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        // Wait for the next job; a stop request ends the wait at once.
        if !ctx.sleep(ctx.settings().job_interval) {
            return Ok(Step::Idle);
        }
        ctx.begin_job();
        self.next_job += 1;
        let job = self.next_job;
        // The job itself: not interrupted by a stop request.
        std::thread::sleep(ctx.settings().job_time);
        info!("[{}] job {job} from {:?} done", ctx.args().tag, self.queue);
        Ok(Step::Worked)
    }

    fn cleanup(&mut self, ctx: &mut Context<Self>) {
        debug!(
            "disconnecting from {:?} after {} jobs in {:?}",
            self.queue,
            ctx.jobs(),
            self.connected_at.elapsed()
        );
    }
}

fn main() -> ExitCode {
    rookery::Daemon::<Demo>::new("demodaemon")
        .version(env!("CARGO_PKG_VERSION"))
        .about("rookery's demo daemon: workers taking simulated jobs")
        .run()
}
