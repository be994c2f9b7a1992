//! Text generated from the command line's own definition: `help`, the man
//! page (`man`) and shell completions (`completions SHELL`). Every daemon
//! gets them, so a daemon's package can install its own page and
//! completions, listing its own options too.

use clap::error::ErrorKind;

/// `help [COMMAND]`: the long help of the program or of one subcommand.
pub(super) fn help(cmd: &mut clap::Command, sub: Option<&String>) -> Result<String, clap::Error> {
    cmd.build();
    let Some(name) = sub else {
        return Ok(cmd.render_long_help().to_string());
    };
    let known = cmd.get_subcommands().any(|s| s.get_name() == name.as_str());
    if !known {
        let e = cmd.error(
            ErrorKind::InvalidSubcommand,
            format!("unrecognized subcommand '{name}'"),
        );
        return Err(e);
    }
    let sc = cmd.find_subcommand_mut(name).expect("a subcommand just found");
    Ok(sc.render_long_help().to_string())
}

/// The man page (roff), with a section per subcommand.
pub(super) fn man(cmd: &clap::Command) -> Result<String, clap::Error> {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut out = Vec::new();
    let page = clap_mangen::Man::new(cmd.clone());
    page.render(&mut out)
        .map_err(|e| clap::Error::raw(ErrorKind::Io, e))?;
    let mut text = String::from_utf8_lossy(&out).into_owned();
    // One section per visible subcommand: its usage and options, as in its
    // `--help`.
    for sc in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        text.push_str(&format!(
            ".SH \"{}\"\n",
            roff_escape(&format!("{} {}", cmd.get_name(), sc.get_name()).to_uppercase())
        ));
        let help = sc.clone().render_long_help().to_string();
        text.push_str(".nf\n");
        for line in help.lines() {
            text.push_str(&roff_escape(line));
            text.push('\n');
        }
        text.push_str(".fi\n");
    }
    Ok(text)
}

/// A line of text made safe for roff: backslashes escaped, a leading `.`
/// or `'` (a request) guarded.
fn roff_escape(line: &str) -> String {
    let s = line.replace('\\', "\\e");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// The completion script for `shell`.
pub(super) fn completions(cmd: &mut clap::Command, shell: clap_complete::Shell) -> String {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, cmd, name, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::super::{command, NoArgs};
    use super::*;

    #[test]
    fn the_man_page_has_every_visible_subcommand_and_option() {
        let cmd = command::<NoArgs>("mydaemon").unwrap();
        let page = man(&cmd).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH mydaemon"), "{page}");
        for s in [
            "start",
            "stop",
            "status",
            "reload",
            "write-systemd",
            "check-config",
        ] {
            assert!(
                page.contains(&format!(".SH \"MYDAEMON {}\"", s.to_uppercase())),
                "{s}"
            );
        }
        assert!(
            page.contains("\\-\\-pidfile") || page.contains("--pidfile"),
            "{page}"
        );
        assert!(!page.contains("MYDAEMON MAN\""), "hidden subcommands stay out");
    }

    #[test]
    fn completions_name_the_subcommands() {
        let mut cmd = command::<NoArgs>("mydaemon").unwrap();
        let bash = completions(&mut cmd, clap_complete::Shell::Bash);
        for s in ["start", "stop", "status", "write-systemd", "--pidfile"] {
            assert!(bash.contains(s), "{s}");
        }
        assert!(bash.contains("complete -F _mydaemon"), "{bash}");
    }
}
