//! A daemon whose workers are copies of an external command: the
//! `rookery` tool, as a library API.
//!
//! [`Commands`] is the builder of a command supervisor. It has no Rust
//! worker type: the pool runs `workers.command` from the config file, or
//! the command given to `NAME run -- COMMAND ...`, with everything a Rust
//! daemon gets (the same command line, config, daemon mode, logs, status,
//! reload, scale, generated init files).

use std::process::ExitCode;

use crate::cli::NoArgs;
use crate::daemon::Daemon;
use crate::hooks::Hooks;
use crate::worker::{BoxError, Context, Step, Worker};

/// Builds and runs a command supervisor: a daemon called `name` whose
/// workers are copies of an external command.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     rookery::Commands::new("phpworkers")
///         .version("1.0")
///         .about("Keeps our PHP queue consumers running")
///         .run()
/// }
/// ```
///
/// `phpworkers run -w 4 -- php worker.php`, or `phpworkers -c FILE start`
/// with `command = ["php", "worker.php"]` under `[workers]`. The `[app]`
/// table, if any, is left to the command.
pub struct Commands {
    daemon: Daemon<NoWorker>,
}

impl Commands {
    /// A command supervisor called `name` (process titles, default paths,
    /// generated files).
    pub fn new(name: &str) -> Commands {
        Commands {
            daemon: Daemon::new(name).command_mode(),
        }
    }

    /// The version `--version` prints.
    pub fn version(self, v: &str) -> Commands {
        Commands {
            daemon: self.daemon.version(v),
        }
    }

    /// issue 11: the build id shown beside the version (as
    /// [`crate::Daemon::build_id`]).
    pub fn build_id(self, id: &str) -> Commands {
        Commands {
            daemon: self.daemon.build_id(id),
        }
    }

    /// The one-line description `--help` prints.
    pub fn about(self, s: &str) -> Commands {
        Commands {
            daemon: self.daemon.about(s),
        }
    }

    /// Parent hooks, as for a Rust daemon ([`crate::Daemon::hooks`]).
    pub fn hooks(self, h: impl Hooks + 'static) -> Commands {
        Commands {
            daemon: self.daemon.hooks(h),
        }
    }

    /// Parses the command line and does what it says. Returns the exit code.
    pub fn run(self) -> ExitCode {
        self.daemon.run()
    }
}

/// The worker type of a pool of commands. It has no values: no Rust
/// worker is ever made (a command supervisor's config must name a
/// command, and the pool execs it instead of forking a worker).
pub(crate) enum NoWorker {}

impl Worker for NoWorker {
    // `[app]` belongs to the command: any table is accepted.
    type Settings = toml::Table;
    type Args = NoArgs;

    fn init(_ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        Err("a command supervisor runs commands: set workers.command or use `run -- COMMAND`".into())
    }

    fn run(&mut self, _ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        match *self {}
    }
}
