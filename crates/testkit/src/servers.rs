//! Real queue servers for the integration tests and the bench.
//!
//! Each fixture starts its own server on a free port in its own temporary
//! directory, waits until it answers a protocol-level probe (polling with a
//! deadline, never a fixed sleep), and kills and reaps it in `Drop`. If the
//! server exits during start-up (most likely because another process took
//! the port between our probe and its `bind`), it is retried on a new port.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::{alive, all_children_of, kill, run_with_timeout, wait_until, TempDir};

/// How long a server may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// How many ports to try before giving up.
const ATTEMPTS: usize = 3;

/// A beanstalkd listening on 127.0.0.1, without a binlog.
pub struct Beanstalkd {
    /// The TCP port it listens on.
    pub port: u16,
    _server: Server,
}

impl Beanstalkd {
    /// Starts `beanstalkd` (from `PATH`) and waits until it answers.
    /// Panics if it cannot (a test without its server cannot run).
    pub fn start() -> Beanstalkd {
        Beanstalkd::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Beanstalkd::start`], or why it could not (for the bench, which goes on
    /// without).
    pub fn try_start() -> Result<Beanstalkd, String> {
        let server = Server::start(
            "beanstalkd",
            |port, _dir| {
                let mut cmd = Command::new("beanstalkd");
                cmd.args(["-l", "127.0.0.1", "-p", &port.to_string()]);
                cmd
            },
            |port| probe(port, b"use default\r\n", "USING default\r\n"),
        )?;
        Ok(Beanstalkd {
            port: server.port,
            _server: server,
        })
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self._server.child.id()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A redis-server listening on 127.0.0.1, with persistence off.
pub struct RedisServer {
    /// The TCP port it listens on.
    pub port: u16,
    _server: Server,
}

impl RedisServer {
    /// Starts `redis-server` (from `PATH`) and waits until it answers PING.
    /// Panics if it cannot (a test without its server cannot run).
    pub fn start() -> RedisServer {
        RedisServer::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`RedisServer::start`], or why it could not (for the bench, which goes on
    /// without).
    pub fn try_start() -> Result<RedisServer, String> {
        let server = Server::start(
            "redis-server",
            |port, dir| {
                let mut cmd = Command::new("redis-server");
                cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
                cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
                cmd.arg("--dir").arg(dir);
                cmd
            },
            |port| probe(port, b"PING\r\n", "+PONG\r\n"),
        )?;
        Ok(RedisServer {
            port: server.port,
            _server: server,
        })
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self._server.child.id()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:<port>/`, for `redis::Client::open`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// A gearmand (Gearman job server) listening on 127.0.0.1, in the
/// foreground, logging into its directory.
pub struct Gearmand {
    /// The TCP port it listens on.
    pub port: u16,
    _server: Server,
}

impl Gearmand {
    /// Starts `gearmand` (from `PATH`, or `/usr/sbin`, where Debian puts it)
    /// and waits until its admin protocol answers `version`.
    pub fn start() -> Gearmand {
        let exe = ["/usr/sbin/gearmand", "/usr/local/sbin/gearmand"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("gearmand");
        let server = Server::start(
            "gearmand",
            |port, dir| {
                let mut cmd = Command::new(exe);
                cmd.arg("--listen=127.0.0.1").arg(format!("--port={port}"));
                cmd.arg(format!("--log-file={}", dir.join("gearmand.log").display()));
                cmd.arg(format!("--pid-file={}", dir.join("gearmand.pid").display()));
                cmd.arg("--threads=1");
                cmd
            },
            |port| probe_with(port, b"version\n", |line| line.starts_with("OK ")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Gearmand {
            port: server.port,
            _server: server,
        }
    }

    /// How many workers are registered for `function` (admin `status`).
    pub fn workers(&self, function: &str) -> Option<u32> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"status\n").ok()?;
        // Lines of FUNCTION<TAB>TOTAL<TAB>RUNNING<TAB>AVAILABLE_WORKERS, then ".".
        for line in BufReader::new(stream).lines() {
            let line = line.ok()?;
            if line == "." {
                return Some(0);
            }
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() == 4 && f[0] == function {
                return f[3].parse().ok();
            }
        }
        None
    }
}

/// A RabbitMQ node of its own: its own name, Erlang cookie, epmd, ports
/// and directories, listening on 127.0.0.1 only, without plugins.
///
/// The node is the Debian package's `rabbitmq-server` script run in its
/// own process group, with `HOME` (where Erlang reads `.erlang.cookie`) and
/// every `RABBITMQ_*` path in a temporary directory, and an `epmd` (the
/// Erlang port mapper) that this fixture starts on a free port and kills:
/// the node is told not to start one (`-start_epmd false`), since an epmd
/// it starts daemonizes and would outlive the test. `Drop` stops the node
/// with SIGTERM (SIGKILL after 20 s), waits for every process it started
/// (`erl_child_setup`, `inet_gethost`, which leave its process group) and
/// kills the epmd. Start-up takes several seconds: a test starts one node
/// and runs all it needs against it.
pub struct RabbitMq {
    /// The AMQP port.
    pub port: u16,
    /// The node's name (`rookery-test-<pid>-<n>@localhost`).
    pub node: String,
    /// The Erlang distribution port (`rabbitmqctl` talks to the node
    /// through it).
    pub dist_port: u16,
    epmd_port: u16,
    /// The `rabbitmq-server` script, leader of the node's process group
    /// (`None` until it is started, after epmd listens).
    server: Option<Child>,
    epmd: Child,
    dir: TempDir,
}

/// How long a RabbitMQ node may take to boot (4 s on an idle machine).
const RABBIT_READY_DEADLINE: Duration = Duration::from_secs(90);

impl RabbitMq {
    /// Starts a node and waits until its AMQP port answers the protocol
    /// header with `connection.start`.
    pub fn start() -> RabbitMq {
        RabbitMq::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`RabbitMq::start`], with an error rather than a panic (for the
    /// bench).
    pub fn try_start() -> Result<RabbitMq, String> {
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            match RabbitMq::attempt() {
                Ok(node) => return Ok(node),
                Err(e) => failures.push(e),
            }
        }
        Err(format!("rabbitmq-server failed to start: {failures:#?}"))
    }

    /// One attempt on fresh ports; `Err` if a port was taken in between.
    fn attempt() -> Result<RabbitMq, String> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = TempDir::new("rabbitmq");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("create home");
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("rookery-{}-{n}-{}", std::process::id(), nanos()))
            .expect("write cookie");
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).expect("chmod cookie");
        let (port, dist_port, epmd_port) = (free_port(), free_port(), free_port());
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
        )
        .expect("write rabbitmq.conf");
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").expect("write rabbitmq-env.conf");
        let log = dir.path().join("output.log");
        let out = std::fs::File::create(&log).expect("create server log");

        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out.try_clone().expect("clone log"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run epmd (is erlang-base installed?): {e}"));
        let node = format!("rookery-test-{}-{n}@localhost", std::process::id());
        let exe = [
            "/usr/lib/rabbitmq/bin/rabbitmq-server",
            "/usr/lib/rabbitmq/sbin/rabbitmq-server",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("rabbitmq-server");
        let mut cmd = Command::new(exe);
        cmd.envs(Self::env(dir.path(), epmd_port))
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.path().join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env("RABBITMQ_PID_FILE", dir.path().join("node.pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.path().join("enabled_plugins"),
            )
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}",
            )
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out)
            .process_group(0);
        let mut rabbit = RabbitMq {
            port,
            node,
            dist_port,
            epmd_port,
            server: None,
            epmd,
            dir,
        };
        // epmd must answer before the node registers with it.
        if !wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", epmd_port)).is_ok()
        }) {
            return Err(format!(
                "epmd on port {epmd_port} did not listen: {}",
                rabbit.output()
            ));
        }
        let server = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {exe} (is rabbitmq-server installed?): {e}"));
        let server = rabbit.server.insert(server);
        let deadline = Instant::now() + RABBIT_READY_DEADLINE;
        loop {
            if amqp_probe(port) {
                return Ok(rabbit);
            }
            if let Some(status) = server.try_wait().expect("try_wait") {
                return Err(format!("port {port}: exited with {status}: {}", rabbit.output()));
            }
            if let Some(status) = rabbit.epmd.try_wait().expect("try_wait") {
                return Err(format!(
                    "epmd port {epmd_port}: exited with {status}: {}",
                    rabbit.output()
                ));
            }
            if Instant::now() >= deadline {
                panic!(
                    "rabbitmq-server on port {port} not ready after {RABBIT_READY_DEADLINE:?}: {}",
                    rabbit.output()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the node's tools need to reach it: this node's cookie (in
    /// `HOME`), epmd port, and no system-wide `rabbitmq-env.conf`.
    fn env(dir: &Path, epmd_port: u16) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("HOME", dir.join("home").into()),
            ("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf").into()),
            ("ERL_EPMD_PORT", epmd_port.to_string().into()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
        ]
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`, for `lapin`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node's console output and its log file.
    pub fn output(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("log")) {
            for e in entries.filter_map(Result::ok) {
                text += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
        text
    }

    /// The pid of the node's Erlang VM (`beam.smp`), from its pidfile.
    pub fn beam_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("node.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of the node's Erlang VM, for the bench's CPU figures (0 if
    /// its pidfile cannot be read, which a started node has written).
    pub fn pid(&self) -> u32 {
        self.beam_pid().map_or(0, |p| p as u32)
    }

    /// The pid of the fixture's epmd.
    pub fn epmd_pid(&self) -> i32 {
        self.epmd.id() as i32
    }

    /// Runs `rabbitmqctl ARGS` against this node.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let exe = ["/usr/lib/rabbitmq/bin/rabbitmqctl", "/usr/sbin/rabbitmqctl"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("rabbitmqctl");
        run_with_timeout(
            Command::new(exe)
                .envs(Self::env(self.dir.path(), self.epmd_port))
                .args(["-n", &self.node])
                .args(args),
            Duration::from_secs(60),
        )
    }

    /// `(ready, unacked)` messages of `queue` (from `rabbitmqctl
    /// list_queues`); `None` if there is no such queue.
    pub fn queue_counts(&self, queue: &str) -> Option<(u64, u64)> {
        self.all_queue_counts().remove(queue)
    }

    /// `(ready, unacked)` messages of every queue, by name: one
    /// `rabbitmqctl list_queues` (each run costs most of a second of CPU).
    pub fn all_queue_counts(&self) -> std::collections::HashMap<String, (u64, u64)> {
        let out = self.ctl(&[
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        assert!(
            out.status.success(),
            "rabbitmqctl list_queues: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                let n = |s: &str| {
                    s.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("bad count in {line:?}"))
                };
                (f.len() == 3).then(|| (f[0].to_string(), (n(f[1]), n(f[2]))))
            })
            .collect()
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        // The VM's helpers (erl_child_setup, inet_gethost) leave the
        // process group: wait for them by pid.
        let mut pids: Vec<i32> = self.beam_pid().into_iter().collect();
        let mut i = 0;
        while i < pids.len() {
            pids.extend(all_children_of(pids[i]));
            i += 1;
        }
        if let Some(server) = &mut self.server {
            let group = Pid::from_raw(server.id() as i32);
            let _ = killpg(group, Signal::SIGTERM);
            let stopped = wait_until(Duration::from_secs(20), || {
                server.try_wait().ok().flatten().is_some() && pids.iter().all(|p| !alive(*p))
            });
            if !stopped {
                let _ = killpg(group, Signal::SIGKILL);
                for p in &pids {
                    kill(*p, 9);
                }
                let _ = server.wait();
            }
        }
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}

/// Nanoseconds of the wall clock, to make a cookie unguessable enough for
/// a test node on loopback.
fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Whether an AMQP 0-9-1 server on `port` answers the protocol header with
/// a method frame (its `connection.start`).
fn amqp_probe(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut first = [0u8; 1];
    stream.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
        && stream.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
        && std::io::Read::read_exact(&mut stream, &mut first).is_ok()
        && first[0] == 1
}

/// A running child process, its port and its directory.
struct Server {
    port: u16,
    child: Child,
    // Dropped (removed) after `Drop::drop` has killed the child.
    _dir: TempDir,
}

impl Server {
    fn start(
        name: &str,
        command: impl Fn(u16, &Path) -> Command,
        ready: impl Fn(u16) -> bool,
    ) -> Result<Server, String> {
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            let dir = TempDir::new(name);
            let port = free_port();
            let log = dir.path().join("output.log");
            let out = std::fs::File::create(&log).expect("create server log");
            let err = out.try_clone().expect("clone server log");
            let child = command(port, dir.path())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("cannot run {name} (is it installed?): {e}"))?;
            let mut server = Server {
                port,
                child,
                _dir: dir,
            };
            let deadline = Instant::now() + READY_DEADLINE;
            loop {
                if ready(port) {
                    return Ok(server);
                }
                if let Some(status) = server.child.try_wait().expect("try_wait") {
                    let output = std::fs::read_to_string(&log).unwrap_or_default();
                    failures.push(format!("port {port}: exited with {status}: {output}"));
                    break;
                }
                if Instant::now() >= deadline {
                    let output = std::fs::read_to_string(&log).unwrap_or_default();
                    return Err(format!(
                        "{name} on port {port} not ready after {READY_DEADLINE:?}: {output}"
                    ));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Err(format!("{name} failed to start: {failures:#?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Whether the server on `port` answers `request` with `expected`.
fn probe(port: u16, request: &[u8], expected: &str) -> bool {
    probe_with(port, request, |line| line == expected)
}

/// Whether the server on `port` answers `request` with a line that `ok`
/// accepts.
fn probe_with(port: u16, request: &[u8], ok: impl Fn(&str) -> bool) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(1));
    if stream.set_read_timeout(timeout).is_err() || stream.write_all(request).is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && ok(&line)
}

#[test]
fn beanstalkd_fixture_answers() {
    let server = Beanstalkd::start();
    assert!(probe(server.port, b"use default\r\n", "USING default\r\n"));
    assert_eq!(server.addr(), format!("127.0.0.1:{}", server.port));
}

#[test]
fn redis_fixture_answers_ping() {
    let server = RedisServer::start();
    assert!(probe(server.port, b"PING\r\n", "+PONG\r\n"));
    let client = redis::Client::open(server.url()).expect("redis url");
    let mut conn = client.get_connection().expect("connect to redis");
    let pong: String = redis::cmd("PING").query(&mut conn).expect("PING");
    assert_eq!(pong, "PONG");
    assert!(server.addr().ends_with(&server.port.to_string()));
}

#[test]
fn gearmand_fixture_answers() {
    let server = Gearmand::start();
    assert!(probe_with(server.port, b"version\n", |l| l.starts_with("OK ")));
    assert_eq!(server.workers("nothing-registered"), Some(0));
}

#[test]
fn rabbitmq_fixture_answers_and_leaves_nothing_running() {
    let server = RabbitMq::start();
    assert!(amqp_probe(server.port));
    let beam = server.beam_pid().expect("the node's pidfile");
    let epmd = server.epmd_pid();
    assert!(alive(beam) && alive(epmd));
    // Its tools reach it with its own cookie and epmd.
    let out = server.ctl(&["status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&server.node));
    assert_eq!(server.queue_counts("nothing-declared"), None);
    // Loopback only: the AMQP, distribution and epmd ports listen on
    // 127.0.0.1 (or ::1) and nowhere else.
    let ports = [server.port, server.dist_port, server.epmd_port];
    let mut seen = std::collections::HashSet::new();
    for (table, loopback) in [
        ("/proc/net/tcp", "0100007F"),
        ("/proc/net/tcp6", "00000000000000000000000001000000"),
    ] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (addr, port) = f[1].split_once(':').expect("local address");
            let port = u16::from_str_radix(port, 16).expect("port");
            if f[3] == "0A" && ports.contains(&port) {
                assert_eq!(addr, loopback, "port {port} listens beyond loopback ({table})");
                seen.insert(port);
            }
        }
    }
    assert_eq!(seen.len(), 3, "listening: {seen:?} of {ports:?}");
    let helpers: Vec<i32> = all_children_of(beam);
    drop(server);
    for p in [beam, epmd].iter().chain(&helpers) {
        assert!(!alive(*p), "pid {p} ({}) still running", crate::comm(*p));
    }
}
