//! Generated operating files: init.d script, systemd unit, logrotate snippet.
//!
//! Each file is rendered by a pure function from the validated [`Config`]
//! and an [`Invocation`] (how to run the daemon) over a template kept beside
//! this module (`initd.sh.in`, `systemd.service.in`, `logrotate.in`).
//! Templates hold `{{placeholder}}`s; a placeholder alone on its line stands
//! for zero or more whole lines, so optional settings are decided in code and
//! the line disappears when there is nothing to say.
//!
//! The checked-in golden files under `tests/golden/` pin the output: a unit
//! test fails when it drifts. After an intended change, refresh them with
//! `ROOKERY_BLESS=1 cargo test --lib generate` and review the diff.
//!
//! [`write()`] puts a rendered file where the operator asked (`--output PATH`,
//! `--stdout`, or the system location) and returns what to tell them next.

mod initd;
mod logrotate;
mod systemd;

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::cli::Output;
use crate::config::Config;

/// The longest process name the kernel keeps (`/proc/PID/comm`), which is
/// what `start-stop-daemon --name`, `pidof` and `killall` match.
const COMM_MAX: usize = 15;

/// How to invoke the daemon: absolute binary path and the global options
/// that reproduce its configuration (e.g. `["-c", "/etc/demodaemon.toml"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The daemon's binary, absolute (init systems run with a minimal `PATH`).
    pub exe: PathBuf,
    /// Global options placed before each subcommand.
    pub args: Vec<String>,
}

/// Which operating file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An LSB SysV init script for `/etc/init.d`.
    Init,
    /// A systemd service unit.
    Systemd,
    /// A logrotate snippet for `/etc/logrotate.d`.
    Logrotate,
}

impl Kind {
    /// The file mode it is written with: init scripts are executable.
    pub fn mode(self) -> u32 {
        match self {
            Kind::Init => 0o755,
            Kind::Systemd | Kind::Logrotate => 0o644,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Init => "init script",
            Kind::Systemd => "systemd unit",
            Kind::Logrotate => "logrotate snippet",
        })
    }
}

/// Writing a generated file failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A file system step failed; `action` says which (e.g. "create").
    #[error("cannot {action} {}: {source}{}", .path.display(), hint(.source))]
    File {
        /// What was being done: "create", "write", "set the mode of", "rename into place".
        action: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Printing to standard output (`--stdout`) failed.
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] io::Error),
    /// The file exists with other content (hand-edited, or generated from
    /// another config), and `--force` was not given.
    #[error(
        "{} exists and differs from the {kind} generated now (edited by hand?): left as it is; \
         compare with --stdout, replace it with --force",
        .path.display()
    )]
    Differs {
        /// The file.
        path: PathBuf,
        /// What would have been written there.
        kind: Kind,
    },
}

impl GenerateError {
    /// The exit code: 1 for a file left alone on purpose, 73 (cannot
    /// create) for the others.
    pub fn exit_code(&self) -> u8 {
        match self {
            GenerateError::Differs { .. } => crate::exit::FAILURE,
            _ => crate::exit::CANTCREAT,
        }
    }
}

fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => " (run as root, or use --output PATH or --stdout)",
        _ => "",
    }
}

/// Renders `kind` for `cfg`; the same inputs always give the same text.
///
/// The one lookup outside the arguments: the logrotate snippet names the
/// configured user's primary group when `daemon.group` is not set.
pub fn render(kind: Kind, cfg: &Config, inv: &Invocation) -> String {
    match kind {
        Kind::Init => initd::render(cfg, inv),
        Kind::Systemd => systemd::render(cfg, inv),
        Kind::Logrotate => logrotate::render(cfg, inv),
    }
}

/// The system location of `kind` for the daemon called `name`:
/// `/etc/init.d/NAME`, `/etc/systemd/system/NAME.service` or
/// `/etc/logrotate.d/NAME`.
pub fn default_path(kind: Kind, name: &str) -> PathBuf {
    match kind {
        Kind::Init => Path::new("/etc/init.d").join(name),
        Kind::Systemd => Path::new("/etc/systemd/system").join(format!("{name}.service")),
        Kind::Logrotate => Path::new("/etc/logrotate.d").join(name),
    }
}

/// Renders `kind` and writes it per `out`: to `--output PATH`, to standard
/// output with `--stdout`, else to [`default_path`]. Files are replaced
/// atomically (a temporary sibling renamed into place) with mode 0755 for
/// the init script and 0644 for the others. An existing file with the same
/// content is left alone ("unchanged"); one with other content only with
/// `--force` (a hand-edited unit must not vanish silently).
///
/// Returns the notes to print for the operator: what was written, how to
/// enable it, and warnings.
pub fn write(kind: Kind, cfg: &Config, inv: &Invocation, out: &Output) -> Result<Vec<String>, GenerateError> {
    let text = render(kind, cfg, inv);
    let warnings = warnings(kind, cfg, inv);
    if out.stdout {
        let mut stdout = io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(GenerateError::Stdout)?;
        return Ok(warnings);
    }
    let name = &cfg.daemon.name;
    let default = default_path(kind, name);
    let path = out.output.clone().unwrap_or_else(|| default.clone());
    let mut notes = match fs::read(&path) {
        Ok(old) if old == text.as_bytes() => vec![format!("unchanged: {}", path.display())],
        Ok(_) if !out.force => return Err(GenerateError::Differs { path, kind }),
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(GenerateError::File {
                action: "read",
                path,
                source: e,
            })
        }
        _ => {
            write_file(&path, &text, kind.mode())?;
            vec![format!("wrote {}", path.display())]
        }
    };
    if path != default {
        notes.push(format!("to use it, install it as {}", default.display()));
    }
    match kind {
        Kind::Init => notes.push(format!(
            "enable at boot: update-rc.d {name} defaults  (or: chkconfig --add {name})"
        )),
        Kind::Systemd => notes.push(format!(
            "systemctl daemon-reload && systemctl enable --now {name}"
        )),
        Kind::Logrotate if cfg.daemon.logfile.is_some() => {
            notes.push(format!("check it with: logrotate -d {}", default.display()));
        }
        Kind::Logrotate => {}
    }
    notes.extend(warnings);
    Ok(notes)
}

/// What the operator should know about the generated file.
fn warnings(kind: Kind, cfg: &Config, inv: &Invocation) -> Vec<String> {
    let mut w = Vec::new();
    let name = &cfg.daemon.name;
    if !inv.exe.is_absolute() {
        w.push(format!(
            "warning: {} is not an absolute path; init systems run with a minimal PATH",
            inv.exe.display()
        ));
    }
    if inv.exe.to_str().is_none() {
        w.push(format!(
            "warning: {} is not valid UTF-8 and was written lossily",
            inv.exe.display()
        ));
    }
    match kind {
        Kind::Init if name.len() > COMM_MAX => w.push(format!(
            "warning: the name {name:?} is longer than {COMM_MAX} characters; the kernel keeps only the \
             first {COMM_MAX} as the process name, so start-stop-daemon --name, pidof and killall will not match it"
        )),
        Kind::Logrotate if cfg.daemon.logfile.is_none() => w.push(
            "note: daemon.logfile is not set (logging goes to stderr), so the snippet rotates nothing".to_string(),
        ),
        _ => {}
    }
    w
}

/// Writes `text` to a temporary sibling of `path`, sets `mode`, and renames
/// it over `path`, so a reader never sees half a file.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), GenerateError> {
    let file_name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.rookery-{}.tmp", std::process::id()));
    let err = |action: &'static str| {
        move |source| GenerateError::File {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err("create"))?;
    let result = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(err("write"))
        // The umask may have cleared bits of `mode`.
        .and_then(|()| {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err("set the mode of"))
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(err("rename into place")));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The directories the daemon creates files in (pidfile, control socket,
/// log file), each once, in that order.
fn daemon_dirs(cfg: &Config) -> Vec<PathBuf> {
    let d = &cfg.daemon;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for path in [Some(&d.pidfile), Some(&d.control_socket), d.logfile.as_ref()]
        .into_iter()
        .flatten()
    {
        if let Some(dir) = path.parent().filter(|p| !dirs.iter().any(|d| d == p)) {
            dirs.push(dir.to_path_buf());
        }
    }
    dirs
}

/// The daemon's directories that an init system must make before each
/// start: those below `/run` (a tmpfs, empty after every boot), `/var/run`
/// and `/var/log` (a package installs no directory for the daemon there).
fn dirs_to_make(cfg: &Config) -> Vec<PathBuf> {
    daemon_dirs(cfg)
        .into_iter()
        .filter(|d| {
            ["/run", "/var/run", "/var/log"]
                .iter()
                .any(|root| d.starts_with(root) && d != Path::new(root))
        })
        .collect()
}

/// Fills `{{key}}` placeholders in `template`.
///
/// A line holding only a placeholder (and whitespace) is replaced by the
/// value as whole lines, or removed when the value is empty. Elsewhere the
/// value is inserted inline and must not contain a newline.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    for line in template.split_inclusive('\n') {
        let trimmed = line.trim();
        let whole = trimmed.strip_prefix("{{").and_then(|t| t.strip_suffix("}}"));
        if let Some((_, value)) = vars.iter().find(|(k, _)| whole == Some(*k)) {
            out.push_str(value);
            if !value.is_empty() && !value.ends_with('\n') {
                out.push('\n');
            }
            continue;
        }
        let mut line = line.to_string();
        for (key, value) in vars {
            let placeholder = format!("{{{{{key}}}}}");
            if line.contains(&placeholder) {
                debug_assert!(!value.contains('\n'), "inline {placeholder} has a newline");
                line = line.replace(&placeholder, value);
            }
        }
        out.push_str(&line);
    }
    debug_assert!(!out.contains("{{"), "unfilled placeholder in:\n{out}");
    out
}

/// Quotes `s` as one POSIX shell word: bare when it is made only of safe
/// characters, else in single quotes.
fn sh_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Quotes `s` in shell double quotes, escaping what is special inside them.
fn sh_dquote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The command line `exe args... extra...` as shell words.
fn sh_command(inv: &Invocation, extra: &[&str]) -> String {
    let mut words = vec![sh_word(&inv.exe.to_string_lossy())];
    words.extend(inv.args.iter().map(|a| sh_word(a)));
    words.extend(extra.iter().map(|a| sh_word(a)));
    words.join(" ")
}

/// `s` made safe for a comment line: control characters become `?`.
fn comment_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tools_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration the golden files are rendered from. Every path and
    /// the account are explicit, so the output does not depend on who runs
    /// the tests (the `daemon` account exists on Debian, RHEL and Alpine).
    pub(super) const DEMO_TOML: &str = r#"
[daemon]
pidfile = "/run/demodaemon/demodaemon.pid"
logfile = "/var/log/demodaemon/demodaemon.log"
user = "daemon"
group = "daemon"
watchdog = "30s"

[workers]
count = 4
stop_timeout = "10s"
nice = 5
rlimit_nofile = 65536
rlimit_core = 0
"#;

    pub(super) fn demo_config() -> Config {
        Config::parse("demodaemon", DEMO_TOML, Path::new("/etc/demodaemon.toml")).unwrap()
    }

    pub(super) fn demo_invocation() -> Invocation {
        Invocation {
            exe: PathBuf::from("/usr/local/bin/demodaemon"),
            args: vec!["-c".into(), "/etc/demodaemon.toml".into()],
        }
    }

    /// Compares `actual` with the golden file `tests/golden/NAME`, whose
    /// text is `expected` (from `include_str!`); with `ROOKERY_BLESS=1`,
    /// writes `actual` there instead.
    pub(super) fn check_golden(name: &str, expected: &str, actual: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("ROOKERY_BLESS").is_some_and(|v| v == "1") {
            fs::write(&path, actual).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            return;
        }
        if expected == actual {
            return;
        }
        let diff = expected
            .lines()
            .map(Some)
            .chain(std::iter::repeat(None))
            .zip(actual.lines().map(Some).chain(std::iter::repeat(None)))
            .take_while(|pair| *pair != (None, None))
            .enumerate()
            .find(|(_, (e, a))| e != a);
        let (line, (e, a)) = diff.unwrap_or((0, (None, None)));
        panic!(
            "{} drifted from the generated output, first at line {}:\n  golden:    {:?}\n  generated: {:?}\n\
             If the change is intended, run `ROOKERY_BLESS=1 cargo test --lib generate` and review the diff.\n\
             --- generated ---\n{actual}",
            path.display(),
            line + 1,
            e.unwrap_or("(end of file)"),
            a.unwrap_or("(end of file)"),
        );
    }

    #[test]
    fn fill_replaces_inline_and_whole_lines() {
        let t = "a={{a}}\n  {{lines}}\nb={{b}}\n{{none}}\nend\n";
        let out = fill(t, &[("a", "1"), ("lines", "x\ny\n"), ("b", "2"), ("none", "")]);
        assert_eq!(out, "a=1\nx\ny\nb=2\nend\n");
    }

    #[test]
    fn templates_have_only_known_placeholders() {
        // Rendering in debug mode asserts that nothing is left unfilled.
        let cfg = demo_config();
        for kind in [Kind::Init, Kind::Systemd, Kind::Logrotate] {
            let text = render(kind, &cfg, &demo_invocation());
            assert!(!text.contains("{{") && !text.contains("}}"), "{kind}:\n{text}");
        }
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_word("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(sh_word("-c"), "-c");
        assert_eq!(sh_word(""), "''");
        assert_eq!(sh_word("/etc/my daemon.toml"), "'/etc/my daemon.toml'");
        assert_eq!(sh_word("it's"), r"'it'\''s'");
        assert_eq!(sh_word("$HOME"), "'$HOME'");
        assert_eq!(sh_dquote(r#"a "b" $c `d` \e"#), r#""a \"b\" \$c \`d\` \\e""#);
    }

    #[test]
    fn default_paths() {
        assert_eq!(default_path(Kind::Init, "x"), Path::new("/etc/init.d/x"));
        assert_eq!(
            default_path(Kind::Systemd, "x"),
            Path::new("/etc/systemd/system/x.service")
        );
        assert_eq!(
            default_path(Kind::Logrotate, "x"),
            Path::new("/etc/logrotate.d/x")
        );
    }

    #[test]
    fn write_sets_mode_and_reports() {
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let dir = std::env::temp_dir().join(format!("rookery-generate-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let _cleanup = Cleanup(dir.clone());
        let cfg = demo_config();
        for kind in [Kind::Init, Kind::Systemd] {
            let path = dir.join(format!("{kind:?}"));
            let out = Output {
                output: Some(path.clone()),
                stdout: false,
                force: false,
            };
            let notes = write(kind, &cfg, &demo_invocation(), &out).unwrap();
            assert_eq!(notes[0], format!("wrote {}", path.display()));
            assert!(notes.iter().any(|n| n.contains("install it as")), "{notes:?}");
            assert_eq!(
                fs::read_to_string(&path).unwrap(),
                render(kind, &cfg, &demo_invocation())
            );
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, kind.mode(), "{kind}");
        }
        let missing = Output {
            output: Some(dir.join("no/such/dir/x")),
            stdout: false,
            force: false,
        };
        let e = write(Kind::Logrotate, &cfg, &demo_invocation(), &missing).unwrap_err();
        assert!(e.to_string().starts_with("cannot create "), "{e}");
        assert!(e.to_string().contains("no/such/dir/x"), "{e}");
        // issue 10: the same content is left alone; other content only with --force.
        let path = dir.join("Systemd");
        let mut out = Output {
            output: Some(path.clone()),
            stdout: false,
            force: false,
        };
        let notes = write(Kind::Systemd, &cfg, &demo_invocation(), &out).unwrap();
        assert_eq!(notes[0], format!("unchanged: {}", path.display()));
        fs::write(&path, "# edited by hand\n").unwrap();
        let e = write(Kind::Systemd, &cfg, &demo_invocation(), &out).unwrap_err();
        assert!(
            matches!(e, GenerateError::Differs { .. }) && e.exit_code() == 1,
            "{e}"
        );
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "# edited by hand\n");
        out.force = true;
        let notes = write(Kind::Systemd, &cfg, &demo_invocation(), &out).unwrap();
        assert_eq!(notes[0], format!("wrote {}", path.display()));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            render(Kind::Systemd, &cfg, &demo_invocation())
        );
    }

    #[test]
    fn long_names_warn_for_init_scripts() {
        let cfg = Config::parse("averyveryverylongname", DEMO_TOML, Path::new("/etc/x.toml")).unwrap();
        let w = warnings(Kind::Init, &cfg, &demo_invocation());
        assert!(w.iter().any(|n| n.contains("longer than 15")), "{w:?}");
        assert!(warnings(Kind::Init, &demo_config(), &demo_invocation()).is_empty());
    }
}
