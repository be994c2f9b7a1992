//! `rookery`: supervise N copies of any command with the full daemon
//! toolkit (config, daemon mode, logging, single instance, restart policy,
//! status, reload, scale, generated init files).
//!
//! `rookery run -w 4 -- php worker.php`, or `command = [...]` under
//! `[workers]` in a config file used with `rookery -c FILE start`.

use std::process::ExitCode;

use rookery::{BoxError, Context, Step, Worker};

/// The in-process worker type of the command supervisor: never used, since
/// `workers.command` is required and external commands are spawned instead.
struct External;

impl Worker for External {
    type Settings = toml::Table;
    type Args = rookery::NoArgs;

    fn init(_ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        Err("rookery supervises commands: set workers.command or use `rookery run -- COMMAND`".into())
    }

    fn run(&mut self, _ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        Ok(Step::Exit)
    }
}

fn main() -> ExitCode {
    rookery::Daemon::<External>::new("rookery")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Supervise a pool of copies of any command")
        .command_mode()
        .run()
}
