//! `rookery`: supervise N copies of any command with the full daemon
//! toolkit (config, daemon mode, logging, single instance, restart policy,
//! status, reload, scale, generated init files).
//!
//! `rookery run -w 4 -- php worker.php`, or `command = [...]` under
//! `[workers]` in a config file used with `rookery -c FILE start`. The
//! whole tool is the library's [`rookery::Commands`].

use std::process::ExitCode;

fn main() -> ExitCode {
    rookery::Commands::new("rookery")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Supervise a pool of copies of any command")
        .run()
}
