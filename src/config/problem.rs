//! Config problems as data: where (file, line, column, key) and what.
//!
//! Every check produces [`Problem`]s; nothing is rendered until the edge
//! (the command line, the log, a control reply) prints them, one line each,
//! as `file:line:col: key: message`.

use std::fmt;
use std::path::PathBuf;

use crate::exit;

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file, if the problem is about one.
    pub file: Option<PathBuf>,
    /// 1-based line in `file` of the key (or of the text) at fault.
    pub line: Option<usize>,
    /// 1-based column (in characters) on that line.
    pub col: Option<usize>,
    /// The dotted key (`workers.count`) or the option (`--workers`) at fault.
    pub key: Option<String>,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl Problem {
    /// A problem with `key` that has no place in a file (a command-line
    /// option, a built-in default).
    pub fn new(key: impl Into<String>, message: impl fmt::Display) -> Problem {
        Problem {
            file: None,
            line: None,
            col: None,
            key: Some(key.into()),
            message: message.to_string(),
        }
    }

    /// A problem that is about no key in particular.
    pub fn message(message: impl fmt::Display) -> Problem {
        Problem {
            file: None,
            line: None,
            col: None,
            key: None,
            message: message.to_string(),
        }
    }

    /// The same problem, in `file`.
    pub fn in_file(mut self, file: impl Into<PathBuf>) -> Problem {
        self.file = Some(file.into());
        self
    }

    /// The same problem, at `line` and `col` (1-based).
    pub fn at(mut self, line: usize, col: usize) -> Problem {
        self.line = Some(line);
        self.col = Some(col);
        self
    }
}

impl fmt::Display for Problem {
    /// `file:line:col: key: message`, leaving out the parts it lacks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(col) = self.col {
                    write!(f, ":{col}")?;
                }
            }
            sep = ": ";
        }
        if let Some(key) = &self.key {
            write!(f, "{sep}{key}")?;
            sep = ": ";
        }
        write!(f, "{sep}{}", self.message)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file says something wrong (EX_CONFIG, 78).
    Invalid,
    /// The file could not be read at all: missing, not permitted, not a
    /// regular file (EX_NOINPUT, 66).
    Unreadable,
}

/// Every problem found in a configuration, each rendered on its own line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// What kind of failure this is (it decides the exit code).
    pub(crate) kind: ConfigErrorKind,
    /// Every problem found, in the order of the file where they have a place.
    pub(crate) problems: Vec<Problem>,
}

impl ConfigError {
    /// An invalid configuration with these problems.
    pub(crate) fn new(problems: Vec<Problem>) -> ConfigError {
        ConfigError {
            kind: ConfigErrorKind::Invalid,
            problems,
        }
    }

    /// A config file that could not be read.
    pub(crate) fn unreadable(problem: Problem) -> ConfigError {
        ConfigError {
            kind: ConfigErrorKind::Unreadable,
            problems: vec![problem],
        }
    }

    /// The sysexits code for this error: 66 when the file cannot be read,
    /// else 78.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ConfigErrorKind::Invalid => exit::CONFIG,
            ConfigErrorKind::Unreadable => exit::NOINPUT,
        }
    }
}

impl From<Problem> for ConfigError {
    fn from(p: Problem) -> ConfigError {
        ConfigError::new(vec![p])
    }
}

impl fmt::Display for ConfigError {
    /// One line per problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_parts_it_has() {
        let p = Problem::new("workers.count", "0 is out of range")
            .in_file("/etc/d.toml")
            .at(7, 1);
        assert_eq!(p.to_string(), "/etc/d.toml:7:1: workers.count: 0 is out of range");
        let p = Problem::new("workers.command", "required").in_file("/etc/d.toml");
        assert_eq!(p.to_string(), "/etc/d.toml: workers.command: required");
        assert_eq!(Problem::new("--workers", "0").to_string(), "--workers: 0");
        assert_eq!(Problem::message("gone").in_file("/x").to_string(), "/x: gone");
    }

    #[test]
    fn one_line_per_problem_and_the_exit_code_follows_the_kind() {
        let e = ConfigError::new(vec![Problem::message("a"), Problem::message("b")]);
        assert_eq!(e.to_string(), "a\nb");
        assert_eq!(e.exit_code(), exit::CONFIG);
        let lines: Vec<String> = e.problems.iter().map(|p| format!("{p}")).collect();
        assert_eq!(lines, ["a", "b"]);
        assert_eq!(
            ConfigError::unreadable(Problem::message("x")).exit_code(),
            exit::NOINPUT
        );
    }
}
