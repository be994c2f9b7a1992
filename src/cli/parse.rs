//! Building the command line and parsing it.
//!
//! The daemon-wide options and the daemon's own (`X`) live on the top-level
//! command, so that `mydaemon --tag v2` (a bare start) and
//! `mydaemon --tag v2 stop` (options first, as init scripts type them) work.
//! Each subcommand also gets its own copies of the options that apply to it
//! ([`applies`]), so that `mydaemon start --tag v2` works and
//! `mydaemon stop --help` lists only what `stop` uses. clap's `global`
//! arguments would do the placing, but every subcommand would then take and
//! list every option.
//!
//! After clap has checked the line, the values of each option are taken
//! from where they were typed (after the subcommand wins), written back as
//! a flat argument list and parsed once more, so that the daemon's `X` is
//! filled by its own derived code, whatever its options look like.

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use super::{Cli, Command, NoArgs};

/// The ids of the daemon-wide options (the fields of [`Cli`]).
const DAEMON_WIDE: [&str; 7] = [
    "name",
    "config",
    "no_daemon",
    "loglevel",
    "workers",
    "pidfile",
    "logfile",
];

/// The subcommands the daemon's own options apply to (after the name).
const TAKES_OWN: [&str; 6] = [
    "start",
    "restart",
    "run",
    "write-init",
    "write-systemd",
    "write-logrotate",
];

/// Whether option `id` (one of the daemon's own when `own`) applies after
/// subcommand `sub`. Anything that reaches a running daemon (`stop`,
/// `status`, `reload`, ... and subcommands added later) takes what finds
/// it: `-c`, `--name`, `--pidfile`.
fn applies(sub: &str, id: &str, own: bool) -> bool {
    match sub {
        "start" | "restart" | "run" => true,
        "write-init" | "write-systemd" | "write-logrotate" => own || id != "no_daemon",
        "check-config" => !own && id != "no_daemon",
        "sample-config" | "help" | "man" | "completions" => false,
        _ => !own && matches!(id, "config" | "name" | "pidfile"),
    }
}

/// A daemon's own options cannot go on rookery's command line as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Clash(String);

/// How an option is typed: `-c, --config` (or only one of them).
fn spelling(a: &Arg) -> String {
    let mut names: Vec<String> = Vec::new();
    names.extend(a.get_short().map(|c| format!("-{c}")));
    names.extend(a.get_long().map(|l| format!("--{l}")));
    if names.is_empty() {
        names.push(format!("<{}>", a.get_id()));
    }
    names.join(", ")
}

fn longs(a: &Arg) -> Vec<&str> {
    let mut v: Vec<&str> = a.get_long().into_iter().collect();
    v.extend(a.get_all_aliases().unwrap_or_default());
    v
}

fn shorts(a: &Arg) -> Vec<char> {
    let mut v: Vec<char> = a.get_short().into_iter().collect();
    v.extend(a.get_all_short_aliases().unwrap_or_default());
    v
}

/// rookery's options that the daemon's own could meet, and where:
/// `(place, -s, --long, id)` (the place is empty for the top level).
fn reserved() -> Vec<(String, Vec<char>, Vec<String>, String)> {
    let framework = Cli::<NoArgs>::command();
    let mut out = vec![
        (
            String::new(),
            vec!['h'],
            vec!["help".to_string()],
            "help".to_string(),
        ),
        (
            String::new(),
            vec!['V'],
            vec!["version".to_string()],
            "version".to_string(),
        ),
    ];
    let mut add = |place: &str, a: &Arg| {
        if !a.is_positional() {
            out.push((
                place.to_string(),
                shorts(a),
                longs(a).into_iter().map(str::to_string).collect(),
                a.get_id().to_string(),
            ));
        }
    };
    for a in framework.get_arguments() {
        add("", a);
    }
    for sc in framework.get_subcommands() {
        if TAKES_OWN.contains(&sc.get_name()) {
            for a in sc.get_arguments() {
                add(sc.get_name(), a);
            }
        }
    }
    out
}

/// The options a daemon's own `clap::Args` must not use, as documented
/// on [`crate::Worker::Args`]: `-c, --config, ...`.
pub fn reserved_names() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (_, s, l, _) in reserved() {
        names.extend(s.iter().map(|c| format!("-{c}")));
        names.extend(l.iter().map(|l| format!("--{l}")));
    }
    names.sort();
    names.dedup();
    names
}

/// Checks the daemon's own options against rookery's: an option with a
/// name (or id) rookery uses, or a positional argument, is an error that
/// names both.
fn check_own<X: clap::Args>() -> Result<(), Clash> {
    let own = X::augment_args(clap::Command::new("own"));
    let taken = reserved();
    for a in own.get_arguments() {
        if a.is_positional() {
            return Err(Clash(format!(
                "the daemon's own argument <{}> is positional; only options (--name VALUE) \
                 can stand beside rookery's subcommands",
                a.get_id()
            )));
        }
        for (place, s, l, id) in &taken {
            let hit = shorts(a).iter().any(|c| s.contains(c))
                || longs(a).iter().any(|x| l.iter().any(|y| y == x))
                || a.get_id().as_str() == id;
            if hit {
                let theirs = match (s.first(), l.first()) {
                    (Some(c), Some(x)) => format!("-{c}, --{x}"),
                    (Some(c), None) => format!("-{c}"),
                    (None, Some(x)) => format!("--{x}"),
                    (None, None) => format!("<{id}>"),
                };
                let place = if place.is_empty() {
                    String::new()
                } else {
                    format!(" (of `{place}`)")
                };
                return Err(Clash(format!(
                    "the daemon's own option {} (id {:?}) clashes with rookery's option {theirs}{place}: \
                     rename it (reserved: {})",
                    spelling(a),
                    a.get_id().as_str(),
                    reserved_names().join(" ")
                )));
            }
        }
    }
    Ok(())
}

/// The command line of a daemon called `name` whose own options are `X`:
/// a [`Clash`] if they cannot stand beside rookery's (instead of clap's
/// panic in debug builds).
pub fn command<X: clap::Args>(name: &str) -> Result<clap::Command, Clash> {
    check_own::<X>()?;
    let own: Vec<String> = X::augment_args(clap::Command::new("own"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    // The struct's doc comment is for rustdoc, not for `--help`.
    let mut cmd = Cli::<X>::command()
        .name(name.to_string())
        .about(None)
        .long_about(None);
    for id in &own {
        cmd = cmd.mut_arg(id, |a| a.help_heading(format!("Options of {name}")));
    }
    let top: Vec<Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_positional() && a.get_id() != "write_init")
        .cloned()
        .collect();
    cmd = cmd.mut_subcommands(|sc| {
        let sub = sc.get_name().to_string();
        let mut sc = sc;
        for a in &top {
            let id = a.get_id().as_str();
            let is_own = own.iter().any(|o| o == id);
            if (is_own || DAEMON_WIDE.contains(&id)) && applies(&sub, id, is_own) {
                sc = sc.arg(a.clone());
            }
        }
        sc
    });
    Ok(cmd)
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed<X: clap::Args> {
    /// Something to do.
    Cli(Box<Cli<X>>),
    /// Text to print on standard output, and exit 0 (help, man page,
    /// completions).
    Print(String),
}

fn typed(m: &ArgMatches, id: &str) -> bool {
    matches!(m.value_source(id), Some(ValueSource::CommandLine))
}

/// The words that give option `a` the values it has in `m`.
fn words(a: &Arg, m: &ArgMatches) -> Vec<OsString> {
    let flag = match (a.get_long(), a.get_short()) {
        (Some(l), _) => format!("--{l}"),
        (None, Some(s)) => format!("-{s}"),
        (None, None) => return Vec::new(),
    };
    let id = a.get_id().as_str();
    let with_values = |occurrences: Vec<Vec<OsString>>| {
        let mut out = Vec::new();
        for values in occurrences {
            match values.as_slice() {
                // `--tag=-x`: a value that starts with '-' stays a value.
                [one] if a.get_long().is_some() => {
                    let mut w = OsString::from(format!("{flag}="));
                    w.push(one);
                    out.push(w);
                }
                _ => {
                    out.push(OsString::from(&flag));
                    out.extend(values);
                }
            }
        }
        out
    };
    let occurrences = || -> Vec<Vec<OsString>> {
        m.get_raw_occurrences(id)
            .map(|o| o.map(|vals| vals.map(OsString::from).collect()).collect())
            .unwrap_or_default()
    };
    match a.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => vec![OsString::from(flag)],
        ArgAction::Count => vec![OsString::from(&flag); usize::from(m.get_count(id))],
        ArgAction::Set => with_values(occurrences().into_iter().last().into_iter().collect()),
        ArgAction::Append => with_values(occurrences()),
        _ => Vec::new(),
    }
}

/// Parses `args` (the program name first) with `cmd`, built by [`command`].
pub fn try_parse<X: clap::Args>(
    mut cmd: clap::Command,
    args: impl IntoIterator<Item = OsString>,
) -> Result<Parsed<X>, clap::Error> {
    let m = cmd.try_get_matches_from_mut(args)?;
    let sub = m.subcommand();
    match sub {
        Some(("help", h)) => {
            return super::docs::help(&mut cmd, h.get_one::<String>("command")).map(Parsed::Print)
        }
        Some(("man", _)) => return super::docs::man(&cmd).map(Parsed::Print),
        Some(("completions", c)) => {
            let shell = *c.get_one::<clap_complete::Shell>("shell").expect("required");
            return Ok(Parsed::Print(super::docs::completions(&mut cmd, shell)));
        }
        _ => {}
    }
    let own: Vec<String> = X::augment_args(clap::Command::new("own"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    // The ids the subcommand has (clap panics, in debug builds, when asked
    // about another).
    let sub_ids: Vec<String> = sub
        .and_then(|(n, _)| cmd.find_subcommand(n))
        .map(|sc| sc.get_arguments().map(|a| a.get_id().to_string()).collect())
        .unwrap_or_default();
    let mut flat = vec![OsString::from(cmd.get_name())];
    let mut app_argv = Vec::new();
    for a in cmd.get_arguments().filter(|a| !a.is_positional()) {
        let id = a.get_id().as_str();
        let from = match sub {
            Some((_, s)) if sub_ids.iter().any(|i| i == id) && typed(s, id) => s,
            _ if typed(&m, id) => &m,
            _ => continue,
        };
        let w = words(a, from);
        if own.iter().any(|o| o == id) {
            app_argv.extend(w.iter().map(|w| w.to_string_lossy().into_owned()));
        }
        flat.extend(w);
    }
    let flat_matches = Cli::<X>::command().try_get_matches_from(flat)?;
    let mut cli = Cli::<X>::from_arg_matches(&flat_matches)?;
    cli.command = match sub {
        Some(_) => Some(Command::from_arg_matches(&m)?),
        None => None,
    };
    cli.app_argv = app_argv;
    Ok(Parsed::Cli(Box::new(cli)))
}

/// [`try_parse`] for a program: prints help, versions, generated text and
/// errors itself; `Err` is then the exit code.
pub fn parse<X: clap::Args>(
    cmd: clap::Command,
    args: impl IntoIterator<Item = OsString>,
) -> Result<Cli<X>, u8> {
    match try_parse::<X>(cmd, args) {
        Ok(Parsed::Cli(c)) => Ok(*c),
        Ok(Parsed::Print(text)) => {
            super::out_raw(text);
            Err(crate::exit::OK)
        }
        Err(e) => {
            let _ = e.print();
            Err(if e.use_stderr() {
                crate::exit::USAGE
            } else {
                crate::exit::OK
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    /// A daemon's own options, of every kind.
    #[derive(Debug, Clone, clap::Args)]
    struct Own {
        /// A tag.
        #[arg(long, default_value = "demo")]
        tag: String,
        /// Verbose.
        #[arg(short = 'v', long, action = ArgAction::Count)]
        verbose: u8,
        /// A switch.
        #[arg(long)]
        dry: bool,
        /// Repeated.
        #[arg(long = "queue")]
        queues: Vec<String>,
    }

    fn cli(args: &[&str]) -> Result<Cli<Own>, clap::Error> {
        let cmd = command::<Own>("d").unwrap();
        match try_parse::<Own>(cmd, args.iter().map(OsString::from))? {
            Parsed::Cli(c) => Ok(*c),
            Parsed::Print(t) => panic!("printed {t}"),
        }
    }

    fn print(args: &[&str]) -> String {
        let cmd = command::<Own>("d").unwrap();
        match try_parse::<Own>(cmd, args.iter().map(OsString::from)) {
            Ok(Parsed::Print(t)) => t,
            Ok(Parsed::Cli(c)) => panic!("parsed {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn own_options_go_before_or_after_start_restart_run_and_write() {
        for args in [
            &["d", "--tag", "v2", "start"][..],
            &["d", "start", "--tag", "v2"],
            &["d", "--tag=v2"],
            &["d", "-c", "x.toml", "start", "--tag=v2"],
            &["d", "restart", "--tag", "v2"],
            &["d", "write-systemd", "--tag", "v2", "--stdout"],
        ] {
            let c = cli(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(c.app.tag, "v2", "{args:?}");
            assert_eq!(c.app_argv, ["--tag=v2"], "{args:?}");
        }
        let c = cli(&["d", "-v", "--queue", "a", "start", "-vv", "--queue=-b", "--dry"]).unwrap();
        assert_eq!(c.app.verbose, 2, "after the subcommand wins");
        assert_eq!(c.app.queues, ["-b"]);
        assert!(c.app.dry);
        assert_eq!(c.app.tag, "demo");
        assert_eq!(c.app_argv, ["--verbose", "--verbose", "--dry", "--queue=-b"]);
        // Before the subcommand, every subcommand takes them (init scripts
        // put the same options before every action).
        let c = cli(&["d", "--tag", "v2", "-w", "3", "stop", "--timeout", "5"]).unwrap();
        assert!(matches!(c.command, Some(Command::Stop { timeout: Some(t) }) if t == Duration::from_secs(5)));
        assert_eq!(c.workers, Some(3));
        // After it, only what applies.
        for bad in [
            &["d", "stop", "--tag", "v2"][..],
            &["d", "stop", "-w", "3"],
            &["d", "status", "-n"],
            &["d", "check-config", "--tag", "x"],
            &["d", "sample-config", "-c", "x"],
        ] {
            let e = cli(bad).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument, "{bad:?}");
        }
        let c = cli(&["d", "status", "--pidfile", "p", "-c", "x.toml", "--name", "n"]).unwrap();
        assert_eq!(c.pidfile, Some(PathBuf::from("p")));
        assert_eq!(c.config, Some(PathBuf::from("x.toml")));
        assert_eq!(c.name.as_deref(), Some("n"));
    }

    #[test]
    fn run_takes_options_before_the_command() {
        let c = cli(&["d", "run", "-w1", "--", "php", "-x", "w.php"]).unwrap();
        assert_eq!(c.workers, Some(1));
        assert!(
            matches!(c.command, Some(Command::Run { ref command }) if command == &["php", "-x", "w.php"])
        );
        let c = cli(&["d", "run", "-n", "php", "-w", "2"]).unwrap();
        assert!(c.no_daemon);
        assert_eq!(c.workers, None);
        assert!(matches!(c.command, Some(Command::Run { ref command }) if command == &["php", "-w", "2"]));
    }

    #[test]
    fn subcommand_help_lists_only_what_applies() {
        let stop = print(&["d", "stop", "--help"]);
        for yes in ["--timeout", "--config", "--pidfile", "--name"] {
            assert!(stop.contains(yes), "{yes} missing:\n{stop}");
        }
        for no in ["--workers", "--no-daemon", "--logfile", "--tag", "--loglevel"] {
            assert!(!stop.contains(no), "{no} listed:\n{stop}");
        }
        let start = print(&["d", "start", "--help"]);
        assert!(
            start.contains("--tag") && start.contains("Options of d"),
            "{start}"
        );
        assert!(print(&["d", "sample-config", "--help"]).contains("Usage: d sample-config"));
        let help = print(&["d", "help", "--help"]);
        assert!(help.contains("Usage: d help [COMMAND]"), "{help}");
        let h = print(&["d", "help", "stop"]);
        assert!(h.contains("Usage: d stop") && !h.contains("--workers"), "{h}");
        assert!(print(&["d", "help"]).contains("Usage: d [OPTIONS] [COMMAND]"));
        assert!(print(&["d", "help", "nosuch"]).contains("nosuch"));
    }

    #[test]
    fn a_clashing_own_option_is_an_error_naming_both() {
        #[derive(Debug, Clone, clap::Args)]
        struct Short {
            /// Clashes with -n, --no-daemon.
            #[arg(short = 'n', long = "number")]
            number: Option<u32>,
        }
        let e = command::<Short>("d").unwrap_err().to_string();
        assert!(e.contains("-n, --number") && e.contains("-n, --no-daemon"), "{e}");
        #[derive(Debug, Clone, clap::Args)]
        struct Long {
            /// Clashes with write-systemd's --output.
            #[arg(long)]
            output: Option<String>,
        }
        let e = command::<Long>("d").unwrap_err().to_string();
        assert!(e.contains("--output") && e.contains("`write-init`"), "{e}");
        #[derive(Debug, Clone, clap::Args)]
        struct Positional {
            /// Positional.
            file: Option<String>,
        }
        let e = command::<Positional>("d").unwrap_err().to_string();
        assert!(e.contains("positional"), "{e}");
        assert!(command::<Own>("d").is_ok());
    }

    #[test]
    fn the_reserved_names_are_documented() {
        let doc = include_str!("../worker.rs");
        for n in reserved_names() {
            assert!(
                doc.contains(&format!("`{n}`")),
                "{n} is not listed on Worker::Args"
            );
        }
    }
}
