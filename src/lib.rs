//! rookery: multi-process worker daemons on Linux.
//!
//! A light, single-threaded parent process forks a pool of worker
//! processes and keeps them alive: it restarts those that die (with
//! back-off), replaces hung or bloated ones, stops them all gracefully on
//! SIGTERM, and its workers exit by themselves if the parent is killed.
//! Around that core every daemon built with rookery gets one command line
//! (`start`, `stop`, `status`, `reload`, `scale`, `reopen-logs`, ...), a
//! TOML config with located errors, syslog levels to a file logrotate can
//! rotate, a pidfile lock, a daemon mode that reports startup failure
//! truthfully, privilege dropping, process titles, and generated init.d,
//! systemd and logrotate files.
//!
//! # Usage
//!
//! Implement [`Worker`] (`init` once per process, `run` for one job) and
//! call [`run`] from `main`:
//!
//! ```no_run
//! use rookery::{BoxError, Context, Step, Worker};
//!
//! #[derive(Debug, Clone, Default, serde::Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct Settings {
//!     greeting: String,
//! }
//!
//! struct Hello {
//!     greeting: String,
//! }
//!
//! impl Worker for Hello {
//!     type Settings = Settings; // the [app] table of the config file
//!     type Args = rookery::NoArgs; // extra command-line options: none
//!
//!     fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError> {
//!         // Runs in the worker process: open connections here.
//!         Ok(Hello { greeting: ctx.settings().greeting.clone() })
//!     }
//!
//!     fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError> {
//!         // One job per call; return Idle when there was nothing to do.
//!         if !ctx.sleep(std::time::Duration::from_secs(1)) {
//!             return Ok(Step::Idle); // woken by a stop request
//!         }
//!         ctx.begin_job();
//!         tracing::info!("{} from worker {}", self.greeting, ctx.slot());
//!         Ok(Step::Worked)
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     rookery::run::<Hello>()
//! }
//! ```
//!
//! With the `tokio` feature, `AsyncWorker` is the same API with async
//! `init`, `run` and `cleanup`, on a runtime each worker process builds
//! for itself (see the README's "Async workers"); `main` stays a plain
//! `fn main` (not `#[tokio::main]`: the parent must stay single-threaded).
//!
//! `hello --no-daemon` runs it in the foreground with 4 workers;
//! `hello -c hello.toml start` detaches and returns once every worker's
//! `init` has returned; `hello status`, `hello scale +2`, `hello stop`.
//!
//! Also: [`Hooks`] for code in the parent, a read-only [`Config`],
//! [`humantime`] for `Duration` settings, and [`Commands`], a daemon whose
//! workers are copies of an external command (the `rookery` tool). The
//! crates the API is written in are re-exported ([`clap`], [`serde`],
//! [`tracing`], [`nix`]), so a daemon uses the same versions.
//!
//! # Theory of operation
//!
//! The parent never starts a thread, so `fork` without `exec` is sound and
//! a worker is a full copy of the program. It blocks its signals and reads
//! them from a signalfd in one `epoll` set, together with a pipe on which
//! workers report readiness, the control socket and its connections, and
//! the output pipes of external commands, each registered once. The loop's
//! timeout is the nearest deadline (a back-off, a stop deadline, a health
//! check, a control client's deadline); with none, it sleeps until
//! something happens, so an idle parent costs nothing. Every descriptor it
//! touches is non-blocking and every buffer bounded, so no client, worker
//! or pipe can stall it.
//!
//! Every decision (restart, back-off, crash loop, recycling, hang and
//! start deadlines, rolling replacement, scaling, the dynamic pool, what a
//! reload changes, the start's verdict) is made by the core, a state
//! machine without system calls: events in, actions out, unit-tested with a
//! fake clock and property-tested over random event sequences. The loop
//! around it (the supervisor) only turns what happens into events and
//! carries out the actions, through a small OS seam that a fake replaces in
//! its unit tests. Workers publish heartbeats, job counts
//! and busy/idle state in a shared memory scoreboard with plain atomic
//! stores: no system call per job.
//!
//! Each worker asks the kernel for its stop signal when the parent dies
//! (`PR_SET_PDEATHSIG`, set after the fork and checked against the
//! recorded parent pid to close the race), and arms `alarm(stop_timeout)`
//! when asked to stop, so an orphan that hangs still dies. The parent is a
//! child subreaper: whatever a dead worker left running is re-parented to
//! it, sent the stop signal, and killed after `stop_timeout`. External
//! commands, which have no such backstop, are watched by a small guard
//! process the parent forks: if the parent dies, the guard stops their
//! process groups (SIGKILL after `stop_timeout`) before it releases the
//! pidfile lock it inherited. Processes are read from `/proc`.
//!
//! Only [`sys`](crate) contains `unsafe` code; the rest of the crate
//! denies it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

// Every module is private: the public API is the re-exports below, what
// a daemon author writes (issue 10: at most 40 items on `cargo doc`'s "all
// items" page, checked by scripts/api-items). The pool state machine, the
// scoreboard, daemonizing, signal setup, /proc and the control protocol
// are the framework's business.
#[cfg(feature = "tokio")]
mod async_worker;
mod cli;
mod client;
mod commands;
mod config;
mod conns;
mod control;
mod core;
mod daemon;
mod daemonize;
mod events;
mod exit;
mod generate;
mod guard;
mod hooks;
pub mod humantime;
mod intake;
mod limits;
mod logging;
mod message;
mod metrics;
mod notify;
mod pidfile;
mod privileges;
mod procfs;
mod scoreboard;
mod signals;
mod spawn;
mod start_error;
mod strays;
mod supervisor;
mod sys;
mod text;
mod titles;
mod upgrade;
mod watch;
mod worker;

pub use crate::core::{ExitStatus, WorkerExit};
#[cfg(feature = "tokio")]
pub use async_worker::{AsyncWorker, Job, JobReporter, StopHandle};
pub use cli::NoArgs;
pub use commands::Commands;
pub use config::{Config, ConfigError};
pub use daemon::{run, Daemon};
pub use hooks::{Hooks, NoHooks};
pub use worker::{error_chain, BoxError, Context, NoSettings, Step, Worker};

// The versions of the crates the API is written in: `Worker::Args` is a
// `clap::Args`, `Worker::Settings` a `serde::Deserialize`, the log is
// written through `tracing`, and a `WorkerExit` holds `nix`'s `Pid` and
// `Signal`. Use these, and a version mismatch cannot happen.
pub use clap;
pub use nix;
pub use serde;
pub use tracing;

/// A commented config file listing every key with its default
/// (`mydaemon sample-config`).
pub(crate) const SAMPLE_CONFIG: &str = include_str!("sample.toml");
