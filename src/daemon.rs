//! The entry point: command line to running daemon.

use std::marker::PhantomData;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tracing::{error, info};

use crate::cli::{out, out_raw, Cli, Command, ScaleSpec};
use crate::client;
use crate::config::{absolute, Config, ConfigError, Overrides, Problem};
use crate::control::{self, Request};
use crate::daemonize::{self, Launch, StartupReport};
use crate::exit;
use crate::generate::{self, Invocation, Kind};
use crate::hooks::{Hooks, NoHooks};
use crate::logging;
use crate::pidfile::{self, Acquired, Holder};
use crate::privileges;
use crate::signals::Inbox;
use crate::spawn::{CommandSpawner, ForkSpawner, Spawner};
use crate::start_error::StartError;
use crate::supervisor::Supervisor;
use crate::titles;
use crate::worker::Worker;

/// Builds and runs a daemon whose workers are `W`.
pub struct Daemon<W: Worker> {
    name: String,
    version: Option<String>,
    about: Option<String>,
    hooks: Box<dyn Hooks>,
    command_mode: bool,
    cli_args: Option<W::Args>,
    /// issue 11: the build id shown beside the version.
    build_id: Option<String>,
    /// issue 11: the directory the command line was given in.
    cli_cwd: PathBuf,
    /// issue 11: in a new image after `upgrade`, the state handed over.
    handover: Option<crate::upgrade::Handover>,
    _w: PhantomData<fn() -> W>,
}

/// Runs a daemon named after its executable, with workers of type `W`.
pub fn run<W: Worker>() -> ExitCode {
    let name = std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "rookery".into());
    Daemon::<W>::new(&name).run()
}

/// A line for the operator on stderr, prefixed with the program name.
fn say(name: &str, msg: impl std::fmt::Display) {
    crate::cli::say(name, msg);
}

impl<W: Worker> Daemon<W> {
    /// A daemon called `name` (process titles, default paths, generated files).
    pub fn new(name: &str) -> Self {
        Daemon {
            name: name.to_string(),
            version: None,
            about: None,
            hooks: Box::new(NoHooks),
            command_mode: false,
            cli_args: None,
            build_id: option_env!("ROOKERY_BUILD_ID").map(str::to_string),
            cli_cwd: PathBuf::from("/"),
            handover: None,
            _w: PhantomData,
        }
    }

    /// issue 11: an id of this build (a commit, a CI build number), shown
    /// with the version in `status`, the log and the metrics, so that an
    /// `upgrade` can be told apart from the binary it replaced. Default:
    /// `ROOKERY_BUILD_ID` in the environment of the build, else none.
    pub fn build_id(mut self, id: &str) -> Self {
        self.build_id = Some(id.to_string());
        self
    }

    /// The version label: `VERSION` or `VERSION+BUILD_ID`.
    fn label(&self) -> String {
        crate::upgrade::label(
            self.version.as_deref().unwrap_or(env!("CARGO_PKG_VERSION")),
            self.build_id.as_deref(),
        )
    }

    /// The version `--version` prints.
    pub fn version(mut self, v: &str) -> Self {
        self.version = Some(v.to_string());
        self
    }

    /// The one-line description `--help` prints.
    pub fn about(mut self, s: &str) -> Self {
        self.about = Some(s.to_string());
        self
    }

    /// Parent hooks (the seed's Daemon class).
    pub fn hooks(mut self, h: impl Hooks + 'static) -> Self {
        self.hooks = Box::new(h);
        self
    }

    /// Makes this the external-command supervisor (`rookery run -- CMD`):
    /// the public way in is [`crate::Commands`].
    pub(crate) fn command_mode(mut self) -> Self {
        self.command_mode = true;
        self
    }

    /// Parses the command line and does what it says. Returns the exit code.
    pub fn run(mut self) -> ExitCode {
        // issue 11: a running daemon asks this binary whether it can take
        // over; and a new image finds the state it was handed.
        crate::upgrade::answer_probe(&self.label());
        self.cli_cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        match crate::upgrade::take() {
            Some(Ok(h)) => {
                // The command line's relative paths mean what they meant.
                let _ = std::env::set_current_dir(&h.cli_cwd);
                self.cli_cwd = h.cli_cwd.clone();
                self.handover = Some(h);
            }
            Some(Err(e)) => {
                say(&self.name, format!("upgrade: {e}"));
                return ExitCode::from(exit::OSERR);
            }
            None => {}
        }
        titles::init();
        std::panic::set_hook(Box::new(|info| {
            tracing::error!("panic: {info}");
            // issue 9: never a second panic (an abort) on a closed stderr.
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("panic: {info}\n"));
        }));
        // issue 10: the daemon's own options beside rookery's, checked
        // here rather than by clap's panic in debug builds.
        let mut cmd = match crate::cli::command::<W::Args>(&self.name) {
            Ok(c) => c,
            Err(e) => {
                say(&self.name, e);
                return ExitCode::from(exit::SOFTWARE);
            }
        };
        if let Some(v) = &self.version {
            cmd = cmd.version(v.clone());
        }
        if let Some(a) = &self.about {
            cmd = cmd.about(a.clone());
        }
        if self.command_mode {
            cmd = cmd.mut_subcommand("run", |c| c.hide(false));
        }
        let cli = match crate::cli::parse::<W::Args>(cmd, std::env::args_os()) {
            Ok(c) => c,
            Err(code) => return ExitCode::from(code),
        };
        ExitCode::from(self.dispatch(cli))
    }

    fn dispatch(&mut self, cli: Cli<W::Args>) -> u8 {
        let mut name = self.name.clone();
        if let Some(n) = &cli.name {
            if let Err(e) = crate::config::check_name(n) {
                say(&name, format!("--name: {e}"));
                return exit::USAGE;
            }
            name = n.clone();
        }
        self.cli_args = Some(cli.app.clone());
        let mut command = match cli.action() {
            Ok(c) => c,
            Err(e) => {
                say(&name, e);
                return exit::USAGE;
            }
        };
        let mut overrides = Overrides {
            workers: cli.workers,
            pidfile: cli.pidfile.clone(),
            logfile: cli.logfile.clone(),
            loglevel: cli.loglevel,
            command: None,
        };
        if let Command::Run { command: c } = &command {
            if !self.command_mode {
                say(
                    &name,
                    "`run` is for the rookery command supervisor; this daemon runs its own workers",
                );
                return exit::USAGE;
            }
            // issue 10: resolved once, where it was typed; a pool of its own.
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
            let resolved = match crate::cli::resolve_command(c, &cwd) {
                Ok(r) => r,
                Err(e) => {
                    say(&name, e);
                    return exit::USAGE;
                }
            };
            if cli.name.is_none() && cli.config.is_none() {
                name = crate::cli::pool_name(&resolved);
                say(
                    &name,
                    format!("the pool is named after its command; reach it with `{} --name {name} status` (or stop)", self.name),
                );
            }
            if resolved[0] != c[0] {
                say(&name, format!("running {} (for {})", resolved[0], c[0]));
            }
            overrides.command = Some(resolved);
            command = Command::Start;
        }
        let config_path = cli.config.as_ref().map(|p| absolute(p));
        // issue 9: what starts (or is checked for a start) is validated
        // like a reload, by the daemon's own checks too.
        let checks = Self::checks(self.command_mode);
        let checked = matches!(
            command,
            Command::Start | Command::CheckConfig | Command::Restart { .. }
        );
        let load = || match checked {
            true => Config::load_checked(&name, config_path.as_deref(), &overrides, &checks),
            false => Config::load(&name, config_path.as_deref(), &overrides),
        };
        let config = match load() {
            Ok(c) => c,
            Err(e) if self.handover.is_some() => {
                let why = format!("config error: {}", e.to_string().replace('\n', "; "));
                say(&name, &why);
                return crate::upgrade::give_back(self.handover.take().expect("checked"), &why);
            }
            Err(e) => {
                // `reload` of a broken config still goes to a running daemon:
                // it logs the errors, keeps its config, and answers with them.
                if matches!(command, Command::Reload) {
                    if let Some(c) = Config::locate(&name, config_path.as_deref(), &overrides)
                        .filter(|c| matches!(pidfile::running(&c.daemon.pidfile), Ok(Some(_))))
                    {
                        return client::control_call(&c, &Request::Reload);
                    }
                }
                // `stop`, `status` and `reopen-logs` need only the pidfile
                // and socket paths: a config broken since the start must not
                // keep the operator from the running daemon.
                if matches!(
                    command,
                    Command::Stop { .. } | Command::Status { .. } | Command::ReopenLogs
                ) {
                    if let Some(c) = Config::locate(&name, config_path.as_deref(), &overrides) {
                        say(
                            &c.daemon.name,
                            format!(
                                "the config has errors ({} shows them); `{}` uses only its pidfile {} and control socket {}",
                                "check-config",
                                command.name(),
                                c.daemon.pidfile.display(),
                                c.daemon.control_socket.display()
                            ),
                        );
                        return match command {
                            Command::Stop { timeout } => client::stop(&c, timeout),
                            Command::Status {
                                json,
                                watch,
                                interval,
                            } => client::status_or_watch(&c, json, watch, interval),
                            _ => client::signal_running(&c, nix::sys::signal::Signal::SIGUSR1),
                        };
                    }
                }
                for p in &e.problems {
                    say(&name, format!("config error: {p}"));
                }
                return e.exit_code();
            }
        };
        let name = config.daemon.name.clone();
        if let Some(h) = self.handover.take() {
            let reloader = load_owned(name.clone(), config_path.clone(), overrides.clone(), checks);
            return self.resume(config, h, Box::new(reloader));
        }
        match command {
            Command::CheckConfig => match preflight(&config) {
                Ok(()) => {
                    out_raw(config.to_toml());
                    exit::OK
                }
                Err(e) => {
                    for p in &e.problems {
                        say(&name, format!("config error: {p}"));
                    }
                    e.exit_code()
                }
            },
            Command::SampleConfig => {
                out_raw(crate::SAMPLE_CONFIG);
                exit::OK
            }
            Command::Status {
                json,
                watch,
                interval,
            } => client::status_or_watch(&config, json, watch, interval),
            Command::Stop { timeout } => client::stop(&config, timeout),
            Command::Reload => client::control_call(&config, &Request::Reload),
            Command::RetryNow => client::control_call(&config, &Request::RetryNow),
            Command::Pause => client::control_call(&config, &Request::Pause), // issue 11
            Command::Resume => client::control_call(&config, &Request::Resume),
            Command::Upgrade { timeout } => client::upgrade(&config, timeout),
            Command::Scale { spec } => match spec.parse::<ScaleSpec>() {
                Ok(s) => client::control_call(&config, &Request::Scale { spec: s.to_string() }),
                Err(e) => {
                    say(&name, e);
                    exit::USAGE
                }
            },
            Command::ReopenLogs => client::signal_running(&config, nix::sys::signal::Signal::SIGUSR1),
            Command::WriteInit(out) => self.write(Kind::Init, &config, &cli, &out),
            Command::WriteSystemd(out) => self.write(Kind::Systemd, &config, &cli, &out),
            Command::WriteLogrotate(out) => self.write(Kind::Logrotate, &config, &cli, &out),
            // Printed by `cli::parse`.
            Command::Help { .. } | Command::Man | Command::Completions { .. } => exit::OK,
            Command::Restart { timeout } => {
                // issue 9: the new config must be startable before the
                // running daemon is touched.
                // issue 9: loaded with the daemon's own checks above; what
                // `start` checks before detaching comes first too.
                if let Err(e) = preflight(&config) {
                    for p in &e.problems {
                        say(&name, format!("config error: {p}"));
                    }
                    say(&name, "not restarting: the running daemon is left as it is");
                    return e.exit_code();
                }
                let code = client::stop(&config, timeout);
                if code != exit::OK && code != exit::NOT_RUNNING {
                    return code;
                }
                let reloader = load_owned(name.clone(), config_path.clone(), overrides.clone(), checks);
                self.start(config, cli.no_daemon, Box::new(reloader))
            }
            Command::Start | Command::Run { .. } => {
                let reloader = load_owned(name.clone(), config_path.clone(), overrides.clone(), checks);
                self.start(config, cli.no_daemon, Box::new(reloader))
            }
        }
    }

    /// Checks what only this daemon can, because it knows `W`: its
    /// `[app]` settings, and the command `rookery` needs.
    fn validate(command_mode: bool, config: &Config) -> Vec<Problem> {
        // issue 10: a Rust daemon runs its own workers, never a command.
        if !command_mode && config.workers.command.is_some() {
            return vec![config.problem(
                "workers.command",
                "is for the `rookery` command supervisor; this daemon runs its own workers \
                 (remove the key, or run the command with `rookery`)",
            )];
        }
        if config.workers.command.is_some() {
            return Vec::new();
        }
        if command_mode {
            // An invalid command was reported with the file's problems.
            if config.sets("workers.command") {
                return Vec::new();
            }
            let p = config.problem(
                "workers.command",
                "required by rookery (or use `rookery run -- COMMAND`)",
            );
            return vec![p];
        }
        config
            .app::<W::Settings>()
            .err()
            .map_or_else(Vec::new, |e| e.problems)
    }

    /// [`Daemon::validate`] as the check `Config::load_checked` runs: one
    /// validation for start, check-config, restart and reload alike.
    fn checks(command_mode: bool) -> impl Fn(&Config) -> Vec<Problem> + 'static {
        move |config| Self::validate(command_mode, config)
    }

    fn write(&self, kind: Kind, config: &Config, cli: &Cli<W::Args>, out: &crate::cli::Output) -> u8 {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.canonicalize().ok())
            .unwrap_or_else(|| PathBuf::from(&self.name));
        let mut args = Vec::new();
        if let Some(c) = &config.source {
            args.push("-c".to_string());
            args.push(c.display().to_string());
        }
        // issue 10: the daemon's own options too.
        args.extend(cli.start_args());
        let inv = Invocation { exe, args };
        match generate::write(kind, config, &inv, out) {
            Ok(notes) => {
                for n in notes {
                    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("{n}\n"));
                }
                exit::OK
            }
            Err(e) => {
                say(&self.name, &e);
                e.exit_code()
            }
        }
    }

    /// `start`: every failure, before or after detaching, is one
    /// [`StartError`], reported once (on the terminal, or through the
    /// startup pipe to the waiting command) with its own exit code.
    fn start(&mut self, config: Config, no_daemon: bool, reloader: crate::supervisor::Reloader) -> u8 {
        let name = config.daemon.name.clone();
        let mut report = StartupReport::none();
        match self.launch(config, no_daemon, &mut report, reloader) {
            Ok(code) => code,
            Err(e) => e.report(&name, &mut report),
        }
    }

    /// Checks, detaches (unless `no_daemon`) and runs the daemon. `report`
    /// becomes the startup pipe once detached.
    fn launch(
        &mut self,
        config: Config,
        no_daemon: bool,
        report: &mut StartupReport,
        reloader: crate::supervisor::Reloader,
    ) -> Result<u8, StartError> {
        let name = config.daemon.name.clone();
        // Forking from a multi-threaded process is unsound: refused here,
        // before anything happens, with what to do about it (the usual
        // cause is `#[tokio::main]`).
        if let Some(n) = crate::sys::thread_count().filter(|n| *n > 1) {
            return Err(StartError::Threads(n));
        }
        // Nothing the invoking shell left open (a deploy script's lock) is
        // kept for the daemon's life or handed to workers: the daemon has
        // opened nothing yet.
        crate::sys::close_inherited_fds().map_err(StartError::InheritedFds)?;
        // issue 9 #18: low numbers for starting commands cheaply; without
        // them (a kernel before 5.9) commands start with fork + exec.
        let _ = crate::sys::exec::reserve();
        // issue 10: the default directories are made, never a config error.
        for dir in config.default_dirs() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| StartError::DefaultDir { path: dir, source })?;
        }
        // `config` passed `Daemon::validate` when it was loaded.
        preflight(&config)?;
        // issue 9: a detached daemon's stdout and stderr are /dev/null.
        if let Some(e) = logging::detached_problem(config.daemon.logfile.as_deref()).filter(|_| !no_daemon) {
            return Err(StartError::LogDiscarded(e));
        }
        // A non-root start cannot become another account: say so now, on the
        // operator's terminal, before anything is opened or detached.
        if let Some(acct) =
            privileges::resolve(config.daemon.user.as_deref(), config.daemon.group.as_deref())?
        {
            let user = config.daemon.user.clone().unwrap_or_else(|| acct.uid.to_string());
            privileges::check(acct, &user)?;
        }
        // issue 9: already running, or orphaned workers of a killed parent
        // to wait for, said on the operator's terminal before detaching.
        if let Some(code) = client::before_start(&config) {
            return Ok(code);
        }
        if !no_daemon {
            match daemonize::daemonize(&config.daemon.workdir, config.daemon.umask)? {
                Launch::Waiter(code, msg) => {
                    if code == exit::OK {
                        out(format!("{name}: {msg}"));
                    } else {
                        for line in msg.lines() {
                            say(&name, line);
                        }
                    }
                    return Ok(code);
                }
                Launch::Failed(r, e) => {
                    *report = r;
                    return Err(e);
                }
                Launch::Daemon(r) => *report = r,
            }
        } else {
            // The same workdir and umask in the foreground as when detached.
            daemonize::settle(&config.daemon.workdir, config.daemon.umask)?;
        }
        self.daemon_main(config, no_daemon, report, reloader)
    }

    /// The daemon's life, in the foreground process or the detached one.
    fn daemon_main(
        &mut self,
        config: Config,
        no_daemon: bool,
        report: &mut StartupReport,
        reloader: crate::supervisor::Reloader,
    ) -> Result<u8, StartError> {
        // Signals are ours from the first moment: blocked here, read later.
        let inbox = Inbox::open().map_err(StartError::Signals)?;
        // issue 13: the parent's descriptor limit, as `daemon.rlimit_nofile`
        // says ("hard" by default: the soft limit raised to the hard one);
        // workers inherit it unless `workers.rlimit_nofile` is set.
        crate::limits::apply_parent(&config.daemon).map_err(|(limit, e)| StartError::Nofile {
            limit,
            source: e.into(),
        })?;
        let pid_lock = match pidfile::acquire(&config.daemon.pidfile)? {
            Acquired::Locked(p) => p,
            Acquired::Held(Holder::Pid(pid)) => return Err(StartError::Running(pid)),
            Acquired::Held(Holder::Headless { pid, locked }) => {
                return Err(StartError::Held {
                    path: config.daemon.pidfile.clone(),
                    pid,
                    locked,
                })
            }
        };
        // From here on the pidfile is ours: removed however this ends, so a
        // failed start leaves no pidfile behind.
        let fds = pid_lock.handover();
        let result = self.locked_main(config, no_daemon, report, reloader, inbox, fds);
        pid_lock.remove();
        result
    }

    /// The daemon's life once it holds the pidfile.
    fn locked_main(
        &mut self,
        config: Config,
        no_daemon: bool,
        report: &mut StartupReport,
        reloader: crate::supervisor::Reloader,
        inbox: Inbox,
        pidfile: crate::upgrade::PidfileFds,
    ) -> Result<u8, StartError> {
        let name = config.daemon.name.clone();
        // The parent keeps its privileges (see `privileges`); only workers
        // switch, to this identity, recorded once for the daemon's life.
        privileges::set_workers(privileges::worker_identity(
            config.daemon.user.as_deref(),
            config.daemon.group.as_deref(),
        )?);
        let log = match &config.daemon.logfile {
            Some(p) => Some(privileges::open_log_shared(p).map_err(|source| StartError::Log {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        logging::set_format(config.daemon.log_format); // issue 10
        logging::init(
            config.daemon.loglevel,
            config.daemon.logfile.as_deref(),
            log,
            no_daemon,
        );
        // The control socket belongs to the parent's own uid (0600), not to
        // the workers' account: workers cannot use it.
        let control = control::Server::bind(&config.daemon.control_socket, None).map_err(|source| {
            StartError::ControlSocket {
                path: config.daemon.control_socket.clone(),
                source,
            }
        })?;
        // issue 12: bound here, like the control socket, so a taken port is a start failure.
        let metrics = match &config.metrics.listen {
            Some(l) => Some(
                crate::metrics::Server::bind(l).map_err(|source| StartError::Metrics {
                    listen: l.to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        let before = crate::upgrade::open_fds();
        let on_start = self.hooks.on_start(&config);
        // issue 11: what on_start opened is kept across an `upgrade`.
        let hook_fds: Vec<i32> = crate::upgrade::open_fds()
            .into_iter()
            .filter(|fd| !before.contains(fd) && crate::sys::fd_is_open(*fd))
            .collect();
        if let Err(e) = on_start {
            let e = StartError::Hook(crate::worker::error_chain(&*e));
            error!("{e}");
            return Err(e);
        }
        info!(
            "{name} {} starting (pid {}, config {})",
            self.label(),
            std::process::id(),
            config
                .source
                .as_ref()
                .map_or("built-in defaults".into(), |p| p.display().to_string())
        );
        let spawner: Box<dyn Spawner> = if config.workers.command.is_some() {
            Box::new(CommandSpawner)
        } else {
            Box::new(ForkSpawner::<W> {
                settings: config.app::<W::Settings>()?,
                args: self.cli_args.take().expect("args parsed"),
            })
        };
        let label = self.label();
        // The supervisor takes the report; should it fail to start, the
        // spare tells the waiting command why. Dropped before any worker
        // is forked.
        let mut spare = report.spare();
        let startup = std::mem::replace(report, StartupReport::none());
        let sup = Supervisor::new(
            crate::supervisor::RealOs,
            config,
            spawner,
            &mut *self.hooks,
            inbox,
            Some(control),
            startup,
            reloader,
        )
        .and_then(|sup| match metrics {
            Some(m) => sup.with_metrics(m), // issue 12
            None => Ok(sup),
        });
        // issue 11: what `upgrade` needs.
        let image = crate::supervisor::ImageState {
            exe: crate::upgrade::Exe::current(None)
                .map_err(|e| {
                    error!("cannot open the daemon's own executable: {e}; `upgrade` will be refused")
                })
                .ok(),
            label,
            hook_fds,
            cli_cwd: self.cli_cwd.clone(),
            no_daemon,
            pidfile: Some(pidfile),
            ..Default::default()
        };
        match sup.map(|s| s.with_image(image)) {
            Ok(sup) => {
                drop(spare);
                Ok(sup.run())
            }
            Err(e) => {
                std::mem::swap(report, &mut spare);
                Err(StartError::Supervisor(e))
            }
        }
    }
}

impl<W: Worker> Daemon<W> {
    /// issue 11: the life of a new image after `upgrade`: the pidfile,
    /// sockets, workers and pool handed over are taken back (nothing is
    /// bound, locked or detached again), and the workers of the earlier
    /// image are replaced. Anything that fails before the descriptors are
    /// taken over sends the state back to the previous image.
    fn resume(
        &mut self,
        config: Config,
        h: crate::upgrade::Handover,
        reloader: crate::supervisor::Reloader,
    ) -> u8 {
        let name = config.daemon.name.clone();
        let fail = |h: crate::upgrade::Handover, why: String| {
            say(&name, format!("upgrade: {why}"));
            crate::upgrade::give_back(h, &why)
        };
        if let Err(e) = daemonize::settle(&config.daemon.workdir, config.daemon.umask) {
            return fail(h, e.to_string());
        }
        let inbox = match Inbox::open() {
            Ok(i) => i,
            Err(e) => return fail(h, format!("signals: {e}")),
        };
        let identity = match privileges::worker_identity(
            config.daemon.user.as_deref(),
            config.daemon.group.as_deref(),
        ) {
            Ok(i) => i,
            Err(e) => return fail(h, e.to_string()),
        };
        let log = match &config.daemon.logfile {
            Some(p) => match privileges::open_log_shared(p) {
                Ok(f) => Some(f),
                Err(e) => return fail(h, format!("cannot open log file {}: {e}", p.display())),
            },
            None => None,
        };
        let settings = if config.workers.command.is_some() {
            None
        } else {
            match config.app::<W::Settings>() {
                Ok(s) => Some(s),
                Err(e) => return fail(h, e.to_string().replace('\n', "; ")),
            }
        };
        if let Err(e) = self.hooks.on_upgrade(&config, &h.hook_fds) {
            return fail(h, format!("on_upgrade: {}", crate::worker::error_chain(&*e)));
        }
        // From here on, the descriptors are this image's.
        let _ = crate::sys::exec::reserve();
        privileges::set_workers(identity);
        logging::init(
            config.daemon.loglevel,
            config.daemon.logfile.as_deref(),
            log,
            h.no_daemon,
        );
        info!(
            "{name} {} starting in place (pid {} unchanged, config {})",
            self.label(),
            std::process::id(),
            config
                .source
                .as_ref()
                .map_or("built-in defaults".into(), |p| p.display().to_string())
        );
        let pid_lock = match pidfile::Pidfile::adopt(&h.pidfile) {
            Ok(p) => p,
            Err(e) => {
                error!("upgrade: the pidfile's descriptors: {e}");
                return exit::OSERR;
            }
        };
        let control = h
            .control
            .and_then(|fd| crate::upgrade::adopt(fd).ok())
            .and_then(|fd| control::Server::adopt(fd, &config.daemon.control_socket).ok());
        let metrics = match (h.metrics, &config.metrics.listen) {
            (Some(fd), Some(l)) => crate::upgrade::adopt(fd)
                .and_then(|fd| crate::metrics::Server::adopt(fd, l))
                .ok(),
            (None, Some(l)) => crate::metrics::Server::bind(l)
                .map_err(|e| error!("metrics: cannot bind {l}: {e}"))
                .ok(),
            (Some(fd), None) => {
                drop(crate::upgrade::adopt(fd));
                None
            }
            (None, None) => None,
        };
        let spawner: Box<dyn Spawner> = match settings {
            None => Box::new(CommandSpawner),
            Some(settings) => Box::new(ForkSpawner::<W> {
                settings,
                args: self.cli_args.take().expect("args parsed"),
            }),
        };
        let image = crate::supervisor::ImageState {
            exe: crate::upgrade::Exe::current(Some(h.exe.clone()))
                .map_err(|e| {
                    error!("cannot open the daemon's own executable: {e}; `upgrade` will be refused")
                })
                .ok(),
            label: self.label(),
            hook_fds: h.hook_fds.clone(),
            cli_cwd: h.cli_cwd.clone(),
            no_daemon: h.no_daemon,
            pidfile: Some(pid_lock.handover()),
            handover: Some(h),
            ..Default::default()
        };
        let sup = Supervisor::new(
            crate::supervisor::RealOs,
            config,
            spawner,
            &mut *self.hooks,
            inbox,
            control,
            StartupReport::none(),
            reloader,
        )
        .and_then(|sup| match metrics {
            Some(m) => sup.with_metrics(m),
            None => Ok(sup),
        });
        let code = match sup {
            Ok(sup) => sup.with_image(image).run(),
            Err(e) => {
                error!("upgrade: cannot run the new binary's loop: {e}");
                exit::OSERR
            }
        };
        pid_lock.remove();
        code
    }
}

/// The reloader: the file read and validated as `start` validates it.
fn load_owned(
    name: String,
    path: Option<PathBuf>,
    overrides: Overrides,
    checks: impl Fn(&Config) -> Vec<Problem> + 'static,
) -> impl Fn() -> Result<Config, ConfigError> {
    move || Config::load_checked(&name, path.as_deref(), &overrides, &checks)
}

/// Checks, before daemonizing, what would make the daemon fail at once, so
/// the error reaches the operator's terminal: the pidfile, log and socket
/// directories exist and are writable, the working directory exists.
fn preflight(config: &Config) -> Result<(), ConfigError> {
    let d = &config.daemon;
    let mut paths = vec![
        ("daemon.pidfile", d.pidfile.as_path()),
        ("daemon.control_socket", d.control_socket.as_path()),
    ];
    if let Some(l) = &d.logfile {
        paths.push(("daemon.logfile", l.as_path()));
    }
    let mut problems = Vec::new();
    let mut seen: Vec<&Path> = Vec::new();
    // `start` creates these; `check-config` must not call them missing.
    let defaults = config.default_dirs();
    for (key, p) in paths {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // One problem per directory (the socket is usually beside the pidfile).
        if seen.contains(&dir) {
            continue;
        }
        seen.push(dir);
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && defaults.iter().any(|d| d == dir) => {
                continue
            }
            Err(e) => {
                problems
                    .push(config.problem(key, format!("directory {} does not exist ({e})", dir.display())));
                continue;
            }
            Ok(m) if !m.is_dir() => {
                problems.push(config.problem(key, format!("{} is not a directory", dir.display())));
                continue;
            }
            Ok(_) => {}
        }
        if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err()
            && !(key == "daemon.logfile" && nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok())
        {
            problems.push(config.problem(key, format!("directory {} is not writable", dir.display())));
        }
    }
    if !d.workdir.is_dir() {
        problems.push(config.problem(
            "daemon.workdir",
            format!("{} is not a directory", d.workdir.display()),
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::new(problems))
    }
}
