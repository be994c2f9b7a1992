//! The command line every rookery daemon gets.
//!
//! [`Cli`] is generic over the daemon's own flags (`X`, any `clap::Args`),
//! which are flattened next to the framework's, so `mydaemon --help` lists
//! both. Global options may come before or after the subcommand.
//!
//! Output goes through [`out`] and [`say`], never `println!`: a command's
//! output may go to a pipe whose reader has left (`status | head -1`), and a
//! closed pipe must end the output quietly, not panic (nor abort, when
//! stderr is the same closed pipe).

use std::fmt::Display;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::logging::Level;

mod docs;
mod parse;
mod run_command;

pub use parse::{command, parse};
#[cfg(test)]
use parse::{try_parse, Parsed};
pub use run_command::{pool_name, resolve as resolve_command};

/// The parsed command line.
///
/// The daemon-wide options (`-c`, `-n`, `-l`, `-w`, `--name`,
/// `--pidfile`, `--logfile`) and the daemon's own (`X`) may be typed
/// before the subcommand, where every subcommand accepts them, or after it,
/// where each subcommand takes only those that apply to it (and its help
/// lists only those): see [`command`] and [`parse`].
#[derive(Debug, Parser)]
#[command(version, disable_help_subcommand = true)]
pub struct Cli<X: clap::Args> {
    /// What to do (default: start).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Name for the default pidfile, socket and log (default: the
    /// program's; for `run`, one derived from the command)
    #[arg(long, value_name = "NAME", long_help = None)]
    pub name: Option<String>,

    /// TOML config file (without it, built-in defaults).
    #[arg(short = 'c', long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Stay in the foreground and log to the console too.
    #[arg(short = 'n', long = "no-daemon")]
    pub no_daemon: bool,

    /// Log level: 0-7 or emerg, alert, crit, err, warning, notice, info, debug.
    #[arg(short = 'l', long, value_name = "LEVEL")]
    pub loglevel: Option<Level>,

    /// Number of workers (overrides the config).
    #[arg(short = 'w', long, value_name = "N")]
    pub workers: Option<u32>,

    /// Pidfile path (overrides the config).
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,

    /// Log file path, or "-" for stderr only (overrides the config).
    #[arg(long, value_name = "PATH")]
    pub logfile: Option<PathBuf>,

    /// The seed's spelling of `write-init`.
    #[arg(long = "write-init", hide = true)]
    pub write_init: bool,

    /// The daemon's own options.
    #[command(flatten)]
    pub app: X,

    /// The daemon's own options as typed (`--tag=v2`), for the start
    /// command of the generated files.
    #[arg(skip)]
    pub app_argv: Vec<String>,
}

impl<X: clap::Args> Cli<X> {
    /// The options that make another invocation run this daemon as this
    /// one would (`--pidfile`, `--logfile`, `-w`, `-l`, `--name` and the
    /// daemon's own options, as typed): the generated unit and init script
    /// start the daemon with them. The config file is the caller's (it is
    /// made absolute); `-n` is the init system's choice.
    pub fn start_args(&self) -> Vec<String> {
        let abs = |p: &std::path::Path| crate::config::absolute(p).display().to_string();
        let mut args = Vec::new();
        if let Some(n) = &self.name {
            args.extend(["--name".to_string(), n.clone()]);
        }
        if let Some(p) = &self.pidfile {
            args.extend(["--pidfile".to_string(), abs(p)]);
        }
        if let Some(p) = &self.logfile {
            // "-" (stderr only) stays "-".
            let v = if p.as_os_str() == "-" {
                "-".to_string()
            } else {
                abs(p)
            };
            args.extend(["--logfile".to_string(), v]);
        }
        if let Some(w) = self.workers {
            args.extend(["--workers".to_string(), w.to_string()]);
        }
        if let Some(l) = self.loglevel {
            args.extend(["--loglevel".to_string(), l.to_string()]);
        }
        args.extend(self.app_argv.iter().cloned());
        args
    }

    /// What to do: the subcommand, `start` without one. The seed's
    /// `--write-init` stands for `write-init` only on its own: with another
    /// subcommand it is a usage error naming both (it must never turn a
    /// `stop` into writing an init script).
    pub fn action(&self) -> Result<Command, String> {
        match (&self.command, self.write_init) {
            (None, true) => Ok(Command::WriteInit(Output::default())),
            (Some(Command::WriteInit(o)), true) => Ok(Command::WriteInit(o.clone())),
            (Some(c), true) => Err(format!(
                "--write-init cannot be combined with the `{}` command",
                c.name()
            )),
            (Some(c), false) => Ok(c.clone()),
            (None, false) => Ok(Command::Start),
        }
    }
}

/// Writes `text` and a newline to standard output. A closed or failing
/// stdout drops the text: the command's result is in its exit code.
pub fn out(text: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Writes `text` as it is (it ends with its own newline) to standard output.
pub fn out_raw(text: impl Display) {
    let _ = write!(std::io::stdout().lock(), "{text}");
}

/// Writes `text` as it is to standard output and flushes it; the error
/// tells a command that keeps writing (`status --watch`) that its reader
/// has left (a closed pipe), so it can end quietly.
pub fn try_out_raw(text: impl Display) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{text}")?;
    stdout.flush()
}

/// A line for the operator on stderr, prefixed with the program name;
/// dropped if stderr is closed.
pub fn say(name: &str, msg: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{name}: {msg}");
}

/// No options of the daemon's own.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NoArgs {}

/// Where a generated file goes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Output {
    /// Write to this path instead of the system location.
    #[arg(short = 'o', long, value_name = "PATH", conflicts_with = "stdout")]
    pub output: Option<PathBuf>,
    /// Print to standard output instead of writing a file.
    #[arg(long)]
    pub stdout: bool,
    /// Replace a file whose content differs (hand-edited, or from another
    /// config) instead of refusing.
    #[arg(long, conflicts_with = "stdout")]
    pub force: bool,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Start the daemon (the default). Exits 0 if it already runs.
    Start,
    /// Stop the running daemon gracefully and wait until it is gone.
    Stop {
        /// How long to wait (default: the configured stop_timeout plus 5s).
        #[arg(long, value_parser = crate::config::parse_duration_arg, value_name = "DURATION")]
        timeout: Option<Duration>,
    },
    /// Stop, then start.
    Restart {
        /// How long to wait for the stop.
        #[arg(long, value_parser = crate::config::parse_duration_arg, value_name = "DURATION")]
        timeout: Option<Duration>,
    },
    /// Exit 0 if running (and show its workers), 3 if not.
    Status {
        /// Print the status as JSON.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw the table every interval (busy/idle, jobs per second,
        /// restarts since start) until Ctrl-C or the daemon stops.
        #[arg(long)]
        watch: bool,
        /// How often `--watch` samples the daemon.
        #[arg(long, default_value = "1s", requires = "watch", value_parser = parse_interval, value_name = "DURATION")]
        interval: Duration,
    },
    /// Re-read the config and apply it without dropping capacity.
    Reload,
    /// Change the number of workers: N, +K or -K.
    #[command(allow_negative_numbers = true)]
    Scale {
        /// N, +K or -K.
        #[arg(allow_hyphen_values = true)]
        spec: String,
    },
    /// Make the daemon and its workers reopen their log files.
    ReopenLogs,
    /// Start every worker waiting out a back-off now (the broker is back).
    RetryNow,
    /// Workers finish the job in hand and take no new one, but stay up
    /// (also SIGTSTP; commands get workers.pause_signal).
    Pause,
    /// Workers take jobs again after `pause` (also SIGCONT).
    Resume,
    /// Run the binary now at the daemon's path, same pid, replacing the
    /// workers slot by slot (a new one ready before an old one stops);
    /// rolls back if the new workers fail. Waits for the outcome.
    Upgrade {
        /// How long to wait for the outcome (default: two drain timeouts,
        /// two start timeouts and a minute).
        #[arg(long, value_parser = crate::config::parse_duration_arg, value_name = "DURATION")]
        timeout: Option<Duration>,
    },
    /// Validate the config and print the effective values.
    CheckConfig,
    /// Print a commented sample config.
    SampleConfig,
    /// Write an LSB init script (default /etc/init.d/NAME).
    WriteInit(Output),
    /// Write a systemd unit (default /etc/systemd/system/NAME.service).
    WriteSystemd(Output),
    /// Write a logrotate snippet (default /etc/logrotate.d/NAME).
    WriteLogrotate(Output),
    /// Supervise copies of COMMAND (the `rookery` binary).
    #[command(hide = true)]
    Run {
        /// The command and its arguments (after `--`, or after the
        /// options: the first word that is not one starts the command).
        #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Print this message or the help of the given subcommand.
    Help {
        /// The subcommand.
        #[arg(value_name = "COMMAND")]
        command: Option<String>,
    },
    /// Print the man page (roff) on standard output.
    #[command(hide = true)]
    Man,
    /// Print the shell completion script for SHELL on standard output.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// The subcommand as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Stop { .. } => "stop",
            Command::Restart { .. } => "restart",
            Command::Status { .. } => "status",
            Command::Reload => "reload",
            Command::Scale { .. } => "scale",
            Command::ReopenLogs => "reopen-logs",
            Command::RetryNow => "retry-now",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Upgrade { .. } => "upgrade",
            Command::CheckConfig => "check-config",
            Command::SampleConfig => "sample-config",
            Command::WriteInit(_) => "write-init",
            Command::WriteSystemd(_) => "write-systemd",
            Command::WriteLogrotate(_) => "write-logrotate",
            Command::Run { .. } => "run",
            Command::Help { .. } => "help",
            Command::Man => "man",
            Command::Completions { .. } => "completions",
        }
    }
}

/// A `--watch` interval: a duration of at least [`MIN_INTERVAL`].
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration_arg(s)?;
    if d < MIN_INTERVAL {
        return Err(format!(
            "{s:?} is too short: at least {}",
            humantime::format_duration(MIN_INTERVAL)
        ));
    }
    Ok(d)
}

/// The shortest `status --watch` interval: each sample is a request the
/// daemon's loop answers, so a watcher must not turn into a flood.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// A parsed `scale` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleSpec {
    /// Exactly N workers.
    To(u32),
    /// K more.
    Up(u32),
    /// K fewer.
    Down(u32),
}

impl std::str::FromStr for ScaleSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid scale {s:?}: expected N, +K or -K");
        if let Some(k) = s.strip_prefix('+') {
            k.parse().map(ScaleSpec::Up).map_err(|_| bad())
        } else if let Some(k) = s.strip_prefix('-') {
            k.parse().map(ScaleSpec::Down).map_err(|_| bad())
        } else {
            s.parse().map(ScaleSpec::To).map_err(|_| bad())
        }
    }
}

impl std::fmt::Display for ScaleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScaleSpec::To(n) => write!(f, "{n}"),
            ScaleSpec::Up(k) => write!(f, "+{k}"),
            ScaleSpec::Down(k) => write!(f, "-{k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `args` parsed as a daemon without options of its own.
    fn parse_test(args: &[&str]) -> Result<Cli<NoArgs>, clap::Error> {
        let cmd = command::<NoArgs>("d").unwrap();
        match try_parse::<NoArgs>(cmd, args.iter().map(std::ffi::OsString::from))? {
            Parsed::Cli(c) => Ok(*c),
            Parsed::Print(t) => panic!("printed {t}"),
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::<NoArgs>::command().debug_assert();
    }

    #[test]
    fn scale_accepts_signed_counts() {
        let cli = parse_test(&["d", "scale", "-2"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Scale { ref spec }) if spec == "-2"));
        assert_eq!("-2".parse::<ScaleSpec>(), Ok(ScaleSpec::Down(2)));
        assert_eq!("+3".parse::<ScaleSpec>(), Ok(ScaleSpec::Up(3)));
        assert_eq!("7".parse::<ScaleSpec>(), Ok(ScaleSpec::To(7)));
        assert!("x".parse::<ScaleSpec>().is_err());
    }

    #[test]
    fn the_seed_write_init_flag_never_overrides_a_subcommand() {
        let action = |args: &[&str]| parse_test(args).unwrap().action();
        assert!(matches!(
            action(&["d", "--write-init"]),
            Ok(Command::WriteInit(_))
        ));
        assert!(matches!(
            action(&["d", "--write-init", "write-init"]),
            Ok(Command::WriteInit(_))
        ));
        assert!(matches!(action(&["d"]), Ok(Command::Start)));
        assert!(matches!(action(&["d", "stop"]), Ok(Command::Stop { .. })));
        let e = action(&["d", "--write-init", "stop"]).unwrap_err();
        assert!(e.contains("--write-init") && e.contains("`stop`"), "{e}");
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse_test(&["d", "status", "-c", "x.toml", "--json"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
        let cli = parse_test(&["d", "-n", "-l", "debug", "-w", "3"]).unwrap();
        assert!(cli.no_daemon);
        assert_eq!(cli.loglevel, Some(Level::Debug));
        assert_eq!(cli.workers, Some(3));
        let cli = parse_test(&["d", "status", "--watch", "--interval", "200ms"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Status { watch: true, interval, json: false }) if interval == Duration::from_millis(200)
        ));
        let cli = parse_test(&["d", "status"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Status { watch: false, interval, .. }) if interval == Duration::from_secs(1)
        ));
        for bad in [
            &["d", "status", "--watch", "--interval", "1ms"][..],
            &["d", "status", "--interval", "2s"],
            &["d", "status", "--watch", "--json"],
        ] {
            assert!(parse_test(bad).is_err(), "{bad:?}");
        }
        let cli = parse_test(&["d", "run", "--", "sh", "-c", "echo hi"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Run { ref command }) if command.len() == 3));
    }
}
