//! Real queue servers for the integration tests and the bench.
//!
//! Each fixture starts its own server on a free port in its own temporary
//! directory, waits until it answers a protocol-level probe (polling with a
//! deadline, never a fixed sleep), and kills and reaps it in `Drop`. If the
//! server exits during start-up (most likely because another process took
//! the port between our probe and its `bind`), it is retried on a new port.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::TempDir;

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
