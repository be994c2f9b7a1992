//! A small blocking client for [beanstalkd], for the examples and tests.
//!
//! The example worker pools reserve a job with a timeout, delete it after
//! success, release it with a delay on a transient error and bury it on a
//! permanent one. That needs a dozen commands of a small text protocol, so
//! this module implements them over a buffered [`TcpStream`] with the
//! standard library only.
//!
//! # Why not a crate
//!
//! The Rust clients on crates.io were checked first: `beanstalkd` (0.4,
//! depends on the old `bufstream`), `beanstalkc` (1.0, depends on the
//! unmaintained `serde_yaml` 0.8), `tokio-beanstalkd` (2018, tokio 0.1) and
//! `mamenoki` (async, needs a tokio runtime). None is both maintained and
//! blocking, and the protocol is small enough that owning ~300 lines is
//! cheaper than any of those dependencies.
//!
//! # Theory of operation
//!
//! Every command is one line ending in `\r\n`, optionally followed by a
//! length-prefixed body (`put`); every reply is one line, optionally followed
//! by a length-prefixed body (`RESERVED`, `OK`). Bodies are binary-safe: they
//! may contain `\r\n`. The reply parsing is done by pure functions over
//! `&str`/[`BufRead`], unit-tested without a server.
//!
//! beanstalkd counts time in whole seconds, so every [`Duration`] is rounded
//! to the nearest second (a TTR is at least one second).
//!
//! A connection that saw an I/O error or an unexpected reply may be in the
//! middle of a reply, so it is marked broken: every later call returns
//! [`Error::Broken`] and the caller should reconnect. Errors the server
//! reports in a well-formed reply (`NOT_FOUND`, `JOB_TOO_BIG`, ...) leave the
//! connection usable.
//!
//! # Example
//!
//! ```no_run
//! use rookery_queues::beanstalk::Client;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), rookery_queues::beanstalk::Error> {
//! let mut client = Client::connect("127.0.0.1:11300")?;
//! client.use_tube("emails")?;
//! client.put(b"hello", 1024, Duration::ZERO, Duration::from_secs(60))?;
//!
//! client.watch("emails")?;
//! if let Some(job) = client.reserve_timeout(Duration::from_secs(5))? {
//!     // ... process job.body ...
//!     client.delete(job.id)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [beanstalkd]: https://github.com/beanstalkd/beanstalkd

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The longest reply line accepted, `\r\n` included. Real replies are
/// under 64 bytes; a longer line means we are not talking to beanstalkd.
const MAX_LINE: u64 = 1024;

/// The longest tube name beanstalkd accepts, in bytes.
const MAX_TUBE_NAME: usize = 200;

/// What can go wrong talking to beanstalkd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting, sending or receiving failed (including an I/O timeout and
    /// the server closing the connection).
    #[error("beanstalkd {command}: {source}")]
    Io {
        /// The command being run (`"connect"`, `"put"`, ...).
        command: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The server sent a reply this client does not understand.
    #[error("beanstalkd {command}: unexpected reply {reply:?}")]
    Protocol {
        /// The command being run.
        command: &'static str,
        /// The reply line (without `\r\n`), or a description of the bad data.
        reply: String,
    },
    /// The job or tube does not exist (or the job is not reserved by this
    /// connection, for `release`, `bury` and `touch`).
    #[error("beanstalkd {command}: {target} not found")]
    NotFound {
        /// The command being run.
        command: &'static str,
        /// What was not found, e.g. `job 42` or `tube emails`.
        target: String,
    },
    /// The body is larger than the server's `max-job-size`.
    #[error("beanstalkd put: job of {size} bytes is too big")]
    JobTooBig {
        /// The body length in bytes.
        size: usize,
    },
    /// The server is draining and accepts no new jobs.
    #[error("beanstalkd put: server is draining")]
    Draining,
    /// The server buried the job instead of queueing it (out of memory on
    /// `put`, or growing the priority queue on `release`).
    #[error("beanstalkd {command}: job {id} was buried")]
    Buried {
        /// The command being run (`"put"` or `"release"`).
        command: &'static str,
        /// The id of the buried job.
        id: u64,
    },
    /// `ignore` refused to ignore the only tube being watched.
    #[error("beanstalkd ignore: {tube:?} is the only watched tube")]
    NotIgnored {
        /// The tube name.
        tube: String,
    },
    /// A tube name that beanstalkd would reject (or that could smuggle a
    /// second command into the stream); checked before sending.
    #[error("invalid beanstalkd tube name {0:?}")]
    InvalidTube(String),
    /// The server reported an error: `OUT_OF_MEMORY`, `INTERNAL_ERROR`,
    /// `BAD_FORMAT`, `UNKNOWN_COMMAND` or `EXPECTED_CRLF`.
    #[error("beanstalkd {command}: server error {reply}")]
    ServerError {
        /// The command being run.
        command: &'static str,
        /// The error line sent by the server.
        reply: String,
    },
    /// An earlier I/O or protocol error left the connection out of step with
    /// the server; reconnect.
    #[error("beanstalkd {command}: connection broken by an earlier error")]
    Broken {
        /// The command that was refused.
        command: &'static str,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A reserved job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job id, to `delete`, `release`, `bury` or `touch` it.
    pub id: u64,
    /// The body exactly as it was put.
    pub body: Vec<u8>,
}

/// The reply to `stats`, `stats-tube` or `stats-job`: a flat map of keys to
/// values as the server sent them (e.g. `current-jobs-ready` → `3`,
/// `state` → `delayed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats(pub BTreeMap<String, String>);

impl Stats {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The value of `key` as an unsigned integer, if present and numeric.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }
}

/// A blocking connection to one beanstalkd server.
///
/// A connection has one tube it puts into ([`use_tube`](Self::use_tube),
/// initially `default`) and a set of tubes it reserves from
/// ([`watch`](Self::watch)/[`ignore`](Self::ignore), initially `default`).
/// Reserved jobs belong to the connection: if it closes, they return to the
/// ready queue.
#[derive(Debug)]
pub struct Client {
    stream: BufReader<TcpStream>,
    broken: bool,
}

impl Client {
    /// Connects to a server (`"127.0.0.1:11300"`) and sets `TCP_NODELAY`.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        let io = |source| Error::Io {
            command: "connect",
            source,
        };
        let stream = TcpStream::connect(addr).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(Client {
            stream: BufReader::new(stream),
            broken: false,
        })
    }

    /// Sets the read and write timeout of the socket (`None`: block forever).
    ///
    /// A timeout turns into [`Error::Io`] and breaks the connection. It must
    /// be longer than any [`reserve_timeout`](Self::reserve_timeout) wait,
    /// or the read times out before the server answers.
    pub fn set_io_timeout(&self, d: Option<Duration>) -> Result<()> {
        let io = |source| Error::Io {
            command: "set timeout",
            source,
        };
        let stream = self.stream.get_ref();
        stream.set_read_timeout(d).map_err(io)?;
        stream.set_write_timeout(d).map_err(io)
    }

    /// Selects the tube that [`put`](Self::put) puts jobs into (`use`).
    pub fn use_tube(&mut self, tube: &str) -> Result<()> {
        check_tube(tube)?;
        let reply = self.command("use", format!("use {tube}"), None)?;
        self.check(parse_using("use", &reply, tube))
    }

    /// Adds `tube` to the tubes reserved from; returns how many are watched.
    pub fn watch(&mut self, tube: &str) -> Result<u32> {
        check_tube(tube)?;
        let reply = self.command("watch", format!("watch {tube}"), None)?;
        self.check(parse_watching("watch", &reply, tube))
    }

    /// Removes `tube` from the tubes reserved from; returns how many are
    /// still watched. Fails with [`Error::NotIgnored`] for the last one.
    pub fn ignore(&mut self, tube: &str) -> Result<u32> {
        check_tube(tube)?;
        let reply = self.command("ignore", format!("ignore {tube}"), None)?;
        self.check(parse_watching("ignore", &reply, tube))
    }

    /// Puts a job into the used tube; returns its id.
    ///
    /// `pri`: lower is more urgent (0 is the most urgent, 1024 is usual).
    /// `delay`: how long the job waits before it becomes ready.
    /// `ttr`: how long a worker may hold it reserved before it is released
    /// again (at least one second).
    pub fn put(&mut self, body: &[u8], pri: u32, delay: Duration, ttr: Duration) -> Result<u64> {
        let line = format!(
            "put {pri} {} {} {}",
            whole_secs(delay),
            whole_secs(ttr).max(1),
            body.len()
        );
        let reply = self.command("put", line, Some(body))?;
        self.check(parse_put(&reply, body.len()))
    }

    /// Reserves a job from the watched tubes, waiting at most `timeout`
    /// (rounded to whole seconds; zero polls).
    ///
    /// Returns `Ok(None)` on `TIMED_OUT`, and also on `DEADLINE_SOON`, which
    /// the server sends when a job this connection already holds is within a
    /// second of its TTR: in both cases the caller just loops (and, for the
    /// latter, should finish, touch or release the job it holds).
    pub fn reserve_timeout(&mut self, timeout: Duration) -> Result<Option<Job>> {
        let line = format!("reserve-with-timeout {}", whole_secs(timeout));
        let reply = self.command("reserve", line, None)?;
        match self.check(parse_reserved(&reply))? {
            None => Ok(None),
            Some((id, len)) => {
                let body = self.body("reserve", len)?;
                Ok(Some(Job { id, body }))
            }
        }
    }

    /// Deletes a job (reserved by this connection, or ready, delayed or
    /// buried).
    pub fn delete(&mut self, id: u64) -> Result<()> {
        let reply = self.command("delete", format!("delete {id}"), None)?;
        self.check(parse_simple("delete", &reply, "DELETED", id))
    }

    /// Puts a job reserved by this connection back into the ready queue
    /// (or the delayed queue if `delay` is not zero) with a new priority.
    pub fn release(&mut self, id: u64, pri: u32, delay: Duration) -> Result<()> {
        let line = format!("release {id} {pri} {}", whole_secs(delay));
        let reply = self.command("release", line, None)?;
        self.check(parse_release(&reply, id))
    }

    /// Buries a job reserved by this connection: it stays until kicked or
    /// deleted.
    pub fn bury(&mut self, id: u64, pri: u32) -> Result<()> {
        let reply = self.command("bury", format!("bury {id} {pri}"), None)?;
        self.check(parse_simple("bury", &reply, "BURIED", id))
    }

    /// Restarts the TTR of a job reserved by this connection.
    pub fn touch(&mut self, id: u64) -> Result<()> {
        let reply = self.command("touch", format!("touch {id}"), None)?;
        self.check(parse_simple("touch", &reply, "TOUCHED", id))
    }

    /// Moves up to `bound` jobs of the used tube back to ready: buried jobs
    /// if there are any, otherwise delayed jobs. Returns how many moved.
    pub fn kick(&mut self, bound: u32) -> Result<u32> {
        let reply = self.command("kick", format!("kick {bound}"), None)?;
        self.check(parse_count("kick", &reply, "KICKED"))
    }

    /// Statistics of one tube (`current-jobs-ready`, `current-watching`, ...).
    pub fn stats_tube(&mut self, tube: &str) -> Result<Stats> {
        check_tube(tube)?;
        self.stats_command("stats-tube", format!("stats-tube {tube}"), format!("tube {tube}"))
    }

    /// Statistics of one job (`state`, `tube`, `pri`, `delay`, `ttr`, ...).
    pub fn stats_job(&mut self, id: u64) -> Result<Stats> {
        self.stats_command("stats-job", format!("stats-job {id}"), format!("job {id}"))
    }

    /// Statistics of the whole server.
    pub fn stats(&mut self) -> Result<Stats> {
        self.stats_command("stats", "stats".to_string(), "server".to_string())
    }

    fn stats_command(&mut self, command: &'static str, line: String, target: String) -> Result<Stats> {
        let reply = self.command(command, line, None)?;
        let len = self.check(parse_ok(command, &reply, &target))?;
        let body = self.body(command, len)?;
        self.check(parse_stats(command, &body))
    }

    /// Sends one command (and its body) and reads the reply line.
    fn command(&mut self, command: &'static str, line: String, body: Option<&[u8]>) -> Result<String> {
        if self.broken {
            return Err(Error::Broken { command });
        }
        let mut out = line.into_bytes();
        out.extend_from_slice(b"\r\n");
        if let Some(body) = body {
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        let sent = self.stream.get_mut().write_all(&out);
        let reply = sent.map_err(|source| Error::Io { command, source });
        let reply = reply.and_then(|()| read_line(command, &mut self.stream));
        self.check(reply)
    }

    /// Reads the body announced by the reply line.
    fn body(&mut self, command: &'static str, len: usize) -> Result<Vec<u8>> {
        let body = read_body(command, &mut self.stream, len);
        self.check(body)
    }

    /// Marks the connection broken if `result` shows it may be out of step.
    fn check<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(Error::Io { .. } | Error::Protocol { .. }) = result {
            self.broken = true;
        }
        result
    }
}

/// Rounds to the nearest whole second, as beanstalkd counts in seconds.
fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_millis() >= 500)
}

/// Checks a tube name against beanstalkd's rules: 1 to 200 bytes of
/// letters, digits and `-+/;.$_()`, not starting with `-`.
fn check_tube(tube: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-+/;.$_()".contains(c);
    let ok = !tube.is_empty()
        && tube.len() <= MAX_TUBE_NAME
        && !tube.starts_with('-')
        && tube.chars().all(allowed);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidTube(tube.to_string()))
    }
}

/// Reads one reply line and returns it without its `\r\n`.
fn read_line(command: &'static str, reader: &mut impl BufRead) -> Result<String> {
    let mut line = Vec::new();
    reader
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .map_err(|source| Error::Io { command, source })?;
    if line.is_empty() {
        let source = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by server");
        return Err(Error::Io { command, source });
    }
    let protocol = |line: &[u8]| Error::Protocol {
        command,
        reply: String::from_utf8_lossy(line).into_owned(),
    };
    let Some(text) = line.strip_suffix(b"\r\n") else {
        return Err(protocol(&line));
    };
    String::from_utf8(text.to_vec()).map_err(|_| protocol(text))
}

/// Reads a body of `len` bytes followed by `\r\n`.
fn read_body(command: &'static str, reader: &mut impl Read, len: usize) -> Result<Vec<u8>> {
    let mut body = vec![0; len + 2];
    reader
        .read_exact(&mut body)
        .map_err(|source| Error::Io { command, source })?;
    if !body.ends_with(b"\r\n") {
        return Err(Error::Protocol {
            command,
            reply: format!("body of {len} bytes not followed by \\r\\n"),
        });
    }
    body.truncate(len);
    Ok(body)
}

/// The error for a reply that no command-specific rule matched.
fn unexpected(command: &'static str, reply: &str) -> Error {
    match reply {
        "OUT_OF_MEMORY" | "INTERNAL_ERROR" | "BAD_FORMAT" | "UNKNOWN_COMMAND" | "EXPECTED_CRLF" => {
            Error::ServerError {
                command,
                reply: reply.to_string(),
            }
        }
        _ => Error::Protocol {
            command,
            reply: reply.to_string(),
        },
    }
}

/// Splits `WORD arg...` and parses the single numeric argument of `word`.
fn number<T: std::str::FromStr>(reply: &str, word: &str) -> Option<T> {
    let arg = reply.strip_prefix(word)?.strip_prefix(' ')?;
    if arg.bytes().all(|b| b.is_ascii_digit()) {
        arg.parse().ok()
    } else {
        None
    }
}

fn parse_put(reply: &str, size: usize) -> Result<u64> {
    if let Some(id) = number(reply, "INSERTED") {
        return Ok(id);
    }
    if let Some(id) = number(reply, "BURIED") {
        return Err(Error::Buried { command: "put", id });
    }
    match reply {
        "JOB_TOO_BIG" => Err(Error::JobTooBig { size }),
        "DRAINING" => Err(Error::Draining),
        _ => Err(unexpected("put", reply)),
    }
}

fn parse_using(command: &'static str, reply: &str, tube: &str) -> Result<()> {
    match reply.strip_prefix("USING ") {
        Some(used) if used == tube => Ok(()),
        _ => Err(unexpected(command, reply)),
    }
}

fn parse_watching(command: &'static str, reply: &str, tube: &str) -> Result<u32> {
    if reply == "NOT_IGNORED" {
        return Err(Error::NotIgnored {
            tube: tube.to_string(),
        });
    }
    parse_count(command, reply, "WATCHING")
}

fn parse_count(command: &'static str, reply: &str, word: &str) -> Result<u32> {
    number(reply, word).ok_or_else(|| unexpected(command, reply))
}

/// `RESERVED <id> <bytes>` → `Some((id, bytes))`; `TIMED_OUT` and
/// `DEADLINE_SOON` → `None`.
fn parse_reserved(reply: &str) -> Result<Option<(u64, usize)>> {
    match reply {
        "TIMED_OUT" | "DEADLINE_SOON" => return Ok(None),
        _ => {}
    }
    let args = reply
        .strip_prefix("RESERVED ")
        .and_then(|rest| rest.split_once(' '));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((id, len)) = args.filter(|(id, len)| digits(id) && digits(len)) {
        if let (Ok(id), Ok(len)) = (id.parse(), len.parse()) {
            return Ok(Some((id, len)));
        }
    }
    Err(unexpected("reserve", reply))
}

fn parse_simple(command: &'static str, reply: &str, success: &str, id: u64) -> Result<()> {
    if reply == success {
        Ok(())
    } else if reply == "NOT_FOUND" {
        Err(Error::NotFound {
            command,
            target: format!("job {id}"),
        })
    } else {
        Err(unexpected(command, reply))
    }
}

fn parse_release(reply: &str, id: u64) -> Result<()> {
    match reply {
        "BURIED" => Err(Error::Buried {
            command: "release",
            id,
        }),
        _ => parse_simple("release", reply, "RELEASED", id),
    }
}

/// `OK <bytes>` → `bytes`.
fn parse_ok(command: &'static str, reply: &str, target: &str) -> Result<usize> {
    if reply == "NOT_FOUND" {
        return Err(Error::NotFound {
            command,
            target: target.to_string(),
        });
    }
    number(reply, "OK").ok_or_else(|| unexpected(command, reply))
}

/// Parses the flat YAML dictionary of a stats reply: a `---` line, then
/// `key: value` lines. Quotes around a value are removed.
fn parse_stats(command: &'static str, body: &[u8]) -> Result<Stats> {
    let bad = |what: &str| Error::Protocol {
        command,
        reply: format!("stats body: {what}"),
    };
    let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
    let mut lines = text.lines();
    if lines.next() != Some("---") {
        return Err(bad("no leading ---"));
    }
    let mut map = BTreeMap::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| bad(&format!("line {line:?}")))?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        map.insert(key.trim().to_string(), value.to_string());
    }
    Ok(Stats(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_to_nearest_second() {
        assert_eq!(whole_secs(Duration::ZERO), 0);
        assert_eq!(whole_secs(Duration::from_millis(499)), 0);
        assert_eq!(whole_secs(Duration::from_millis(500)), 1);
        assert_eq!(whole_secs(Duration::from_millis(2400)), 2);
        assert_eq!(whole_secs(Duration::from_secs(60)), 60);
    }

    #[test]
    fn tube_names() {
        for ok in ["default", "a", "jobs.v2", "a-b+c/d;e$f_g(h)", &"x".repeat(200)] {
            assert!(check_tube(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a b", "a\r\nput 0 0 1 1", "é", &"x".repeat(201)] {
            assert!(matches!(check_tube(bad), Err(Error::InvalidTube(_))), "{bad:?}");
        }
    }

    #[test]
    fn reads_lines_and_binary_bodies() {
        let mut input: &[u8] = b"RESERVED 7 4\r\na\r\nb\r\nNEXT\r\n";
        assert_eq!(read_line("t", &mut input).unwrap(), "RESERVED 7 4");
        assert_eq!(read_body("t", &mut input, 4).unwrap(), b"a\r\nb");
        assert_eq!(read_line("t", &mut input).unwrap(), "NEXT");
        let eof = read_line("t", &mut input).unwrap_err();
        assert!(matches!(eof, Error::Io { ref source, .. } if source.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn rejects_bad_framing() {
        let mut no_cr: &[u8] = b"DELETED\n";
        assert!(matches!(read_line("t", &mut no_cr), Err(Error::Protocol { .. })));
        let mut unterminated: &[u8] = b"DELETED";
        assert!(matches!(
            read_line("t", &mut unterminated),
            Err(Error::Protocol { .. })
        ));
        let long = vec![b'A'; 2000];
        assert!(matches!(
            read_line("t", &mut long.as_slice()),
            Err(Error::Protocol { .. })
        ));
        let mut body: &[u8] = b"abcdXY";
        assert!(matches!(
            read_body("t", &mut body, 4),
            Err(Error::Protocol { .. })
        ));
        let mut short: &[u8] = b"ab";
        assert!(matches!(read_body("t", &mut short, 4), Err(Error::Io { .. })));
    }

    #[test]
    fn put_replies() {
        assert_eq!(parse_put("INSERTED 42", 1).unwrap(), 42);
        assert!(matches!(
            parse_put("BURIED 9", 1),
            Err(Error::Buried {
                id: 9,
                command: "put"
            })
        ));
        assert!(matches!(
            parse_put("JOB_TOO_BIG", 5),
            Err(Error::JobTooBig { size: 5 })
        ));
        assert!(matches!(parse_put("DRAINING", 1), Err(Error::Draining)));
        assert!(matches!(
            parse_put("EXPECTED_CRLF", 1),
            Err(Error::ServerError { .. })
        ));
        assert!(matches!(
            parse_put("OUT_OF_MEMORY", 1),
            Err(Error::ServerError { .. })
        ));
        for bad in [
            "INSERTED",
            "INSERTED x",
            "INSERTED -1",
            "INSERTED 1 2",
            "INSERTED  1",
            "WHAT",
        ] {
            assert!(matches!(parse_put(bad, 1), Err(Error::Protocol { .. })), "{bad}");
        }
    }

    #[test]
    fn tube_replies() {
        assert!(parse_using("use", "USING jobs", "jobs").is_ok());
        assert!(matches!(
            parse_using("use", "USING other", "jobs"),
            Err(Error::Protocol { .. })
        ));
        assert_eq!(parse_watching("watch", "WATCHING 2", "jobs").unwrap(), 2);
        assert!(matches!(
            parse_watching("ignore", "NOT_IGNORED", "jobs"),
            Err(Error::NotIgnored { .. })
        ));
        assert!(matches!(
            parse_watching("watch", "BAD_FORMAT", "jobs"),
            Err(Error::ServerError { .. })
        ));
        assert_eq!(parse_count("kick", "KICKED 3", "KICKED").unwrap(), 3);
    }

    #[test]
    fn reserve_replies() {
        assert_eq!(parse_reserved("RESERVED 5 11").unwrap(), Some((5, 11)));
        assert_eq!(parse_reserved("RESERVED 5 0").unwrap(), Some((5, 0)));
        assert_eq!(parse_reserved("TIMED_OUT").unwrap(), None);
        assert_eq!(parse_reserved("DEADLINE_SOON").unwrap(), None);
        for bad in [
            "RESERVED 5",
            "RESERVED 5 x",
            "RESERVED  5 1",
            "RESERVED 5 1 2",
            "RESERVED +5 1",
        ] {
            assert!(
                matches!(parse_reserved(bad), Err(Error::Protocol { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_reserved("UNKNOWN_COMMAND"),
            Err(Error::ServerError { .. })
        ));
    }

    #[test]
    fn job_command_replies() {
        assert!(parse_simple("delete", "DELETED", "DELETED", 1).is_ok());
        let err = parse_simple("delete", "NOT_FOUND", "DELETED", 1).unwrap_err();
        assert!(matches!(
            err,
            Error::NotFound {
                command: "delete",
                ..
            }
        ));
        assert_eq!(err.to_string(), "beanstalkd delete: job 1 not found");
        assert!(matches!(
            parse_simple("touch", "DELETED", "TOUCHED", 1),
            Err(Error::Protocol { .. })
        ));
        assert!(parse_release("RELEASED", 3).is_ok());
        assert!(matches!(
            parse_release("BURIED", 3),
            Err(Error::Buried {
                id: 3,
                command: "release"
            })
        ));
        assert!(matches!(
            parse_release("NOT_FOUND", 3),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn stats_replies() {
        assert_eq!(parse_ok("stats", "OK 123", "server").unwrap(), 123);
        assert!(matches!(
            parse_ok("stats-tube", "NOT_FOUND", "tube x"),
            Err(Error::NotFound { .. })
        ));
        let body = b"---\nname: default\ncurrent-jobs-ready: 3\nversion: \"1.12\"\nempty: \n";
        let stats = parse_stats("stats", body).unwrap();
        assert_eq!(stats.get("name"), Some("default"));
        assert_eq!(stats.get_u64("current-jobs-ready"), Some(3));
        assert_eq!(stats.get("version"), Some("1.12"));
        assert_eq!(stats.get_u64("name"), None);
        assert_eq!(stats.get("empty"), Some(""));
        assert_eq!(stats.get("missing"), None);
        assert!(matches!(
            parse_stats("stats", b"name: x\n"),
            Err(Error::Protocol { .. })
        ));
        assert!(matches!(
            parse_stats("stats", b"---\nno colon\n"),
            Err(Error::Protocol { .. })
        ));
    }
}
