//! What a daemon's own code may read of its configuration: hooks get a
//! `&Config` in `on_start`, workers through `Context::config`. Read-only,
//! and only what a daemon author needs; the validated tables themselves
//! are the framework's and change as it grows.

use std::path::Path;

use super::{Config, ConfigError, Overrides};

impl Config {
    /// Reads and validates the config file of the daemon called `name` as
    /// `NAME -c PATH` would, without command-line overrides; `None` reads
    /// the built-in defaults (and the environment, like the daemon does).
    /// For a tool that shares the daemon's config file (a producer, a
    /// baseline run without rookery); the daemon itself gets its config
    /// from [`crate::Daemon::run`].
    pub fn read(name: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load(name, path, &Overrides::default())
    }

    /// The daemon's name (`daemon.name`): process titles, default paths.
    pub fn name(&self) -> &str {
        &self.daemon.name
    }

    /// The file it was read from (absolute), or `None` for the built-in
    /// defaults.
    pub fn file(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// `daemon.pidfile`.
    pub fn pidfile(&self) -> &Path {
        &self.daemon.pidfile
    }

    /// `daemon.control_socket`.
    pub fn control_socket(&self) -> &Path {
        &self.daemon.control_socket
    }

    /// `daemon.logfile`; `None` when the log goes to stderr only.
    pub fn logfile(&self) -> Option<&Path> {
        self.daemon.logfile.as_deref()
    }

    /// `daemon.user`, the account workers run as, if one is set.
    pub fn user(&self) -> Option<&str> {
        self.daemon.user.as_deref()
    }

    /// `daemon.workdir`, the directory the daemon runs in.
    pub fn workdir(&self) -> &Path {
        &self.daemon.workdir
    }

    /// `workers.count`, the pool's size at start.
    pub fn workers(&self) -> u32 {
        self.workers.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_reads_the_file() {
        let c = Config::parse(
            "viewd",
            "[daemon]\npidfile = \"/run/viewd/v.pid\"\nuser = \"nobody\"\n\n[workers]\ncount = 3\n",
            Path::new("/etc/viewd.toml"),
        )
        .unwrap();
        assert_eq!(c.name(), "viewd");
        assert_eq!(c.file(), Some(Path::new("/etc/viewd.toml")));
        assert_eq!(c.pidfile(), Path::new("/run/viewd/v.pid"));
        assert_eq!(c.control_socket().parent(), Some(Path::new("/run/viewd")));
        assert_eq!(c.user(), Some("nobody"));
        assert_eq!(c.workers(), 3);
    }

    #[test]
    fn read_without_a_file_gives_the_defaults() {
        let c = Config::read("viewd", None).unwrap();
        assert_eq!(c.file(), None);
        assert_eq!(c.workers(), 4);
        let missing = Config::read("viewd", Some(Path::new("/nonexistent/viewd.toml")));
        assert_eq!(missing.unwrap_err().exit_code(), crate::exit::NOINPUT);
    }
}
