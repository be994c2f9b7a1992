//! Lines to a stream (stderr, or `--logfile /dev/stdout`): whole lines or
//! none, never blocking, journald's priority prefix, colour on a terminal.
//!
//! Only the parent writes to a stream. A worker hands its lines to the
//! parent through a pipe of its own (the *relay*, see [`Relay`]) and the
//! parent writes them, so lines of many processes longer than `PIPE_BUF`
//! (4 KiB), which the kernel may split when several processes write one
//! pipe, are never spliced into each other.
//!
//! A pipe the reader drains slower than lines come may take only part of
//! a line: the rest is kept ([`PENDING_MAX`] at most) and written before
//! anything else, when the pipe has room again (the parent's loop calls
//! [`Console::flush`] while [`Console::retry_in`] says so). Lines that do
//! not fit are counted, and the count is written before the next line
//! that does.

use std::fs::File;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::Out;

/// Bytes kept for a stream that cannot take them now (a stalled reader);
/// past that, lines are dropped and counted.
pub(crate) const PENDING_MAX: usize = 1 << 20;
/// A reader that took something within this long is slow, not gone: while
/// half of [`PENDING_MAX`] waits for it, the parent stops reading workers'
/// pipes (see [`Console::congested`]) rather than dropping their lines.
const ALIVE: Duration = Duration::from_secs(1);

/// The parent's stream.
pub(crate) struct Console {
    out: Out,
    /// journald reads it (`JOURNAL_STREAM` names this descriptor): each
    /// line starts with its syslog priority, `<3>`.
    journal: bool,
    /// A terminal: the level is coloured (text format only).
    colour: bool,
    pending: Vec<u8>,
    /// Since when `pending` has been waiting.
    stalled: Option<Instant>,
    /// When the stream last took some bytes.
    progress: Instant,
    lost: u64,
}

impl Console {
    pub(crate) fn new(file: File) -> Console {
        let journal = under_journald(&file);
        let colour = nix::unistd::isatty(&file).unwrap_or(false) && std::env::var_os("NO_COLOR").is_none();
        Console {
            out: Out::new(file),
            journal,
            colour,
            pending: Vec::new(),
            stalled: None,
            progress: Instant::now(),
            lost: 0,
        }
    }

    /// Forgets what a process this one was forked from had pending.
    pub(crate) fn forget(&mut self) {
        self.pending.clear();
        self.stalled = None;
        self.lost = 0;
    }

    /// Writes `line` (ending in a newline) with priority `prio`, whole or
    /// not at all. `notice(n)` makes the line that says `n` lines were lost.
    pub(crate) fn put(&mut self, prio: u8, line: &[u8], notice: &dyn Fn(u64) -> Vec<u8>) {
        self.flush();
        let mut buf = Vec::with_capacity(line.len() + 16);
        let mut told = 0;
        if self.lost > 0 && self.pending.is_empty() {
            told = self.lost;
            self.decorate(4, &notice(told), &mut buf);
        }
        self.decorate(prio, line, &mut buf);
        if !self.pending.is_empty() {
            if self.pending.len() + buf.len() <= PENDING_MAX {
                self.pending.extend_from_slice(&buf);
            } else {
                self.lost += 1;
            }
            return;
        }
        self.lost -= told;
        match write_some(&self.out, &buf) {
            Ok(n) if n == buf.len() => self.progress = Instant::now(),
            Ok(n) => {
                self.progress = Instant::now();
                self.keep(&buf[n..]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && buf.len() <= PENDING_MAX => self.keep(&buf),
            Err(_) => self.lost += told + 1,
        }
    }

    fn keep(&mut self, rest: &[u8]) {
        self.pending.extend_from_slice(rest);
        self.stalled.get_or_insert_with(Instant::now);
    }

    /// Writes what is pending, as much as the stream takes now.
    pub(crate) fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match write_some(&self.out, &self.pending) {
            Ok(n) => {
                if n > 0 {
                    self.progress = Instant::now();
                }
                self.pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                // The reader is gone: what is pending will never be read.
                self.pending.clear();
                self.lost += 1;
            }
        }
        if self.pending.is_empty() {
            self.stalled = None;
        }
    }

    /// Writes what is pending, waiting up to `limit` for the reader.
    pub(crate) fn finish(&mut self, limit: Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let end = Instant::now() + limit;
        self.flush();
        while !self.pending.is_empty() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.out.file.as_fd(), PollFlags::POLLOUT)];
            if poll(&mut fds, PollTimeout::from(ms.max(1))).is_err() {
                return;
            }
            self.flush();
        }
    }

    /// Whether the parent should hold workers' output for now: half of
    /// what may wait is waiting, and the reader is slow rather than gone
    /// (it took something within [`ALIVE`]). Holding them (their pipes
    /// fill, their writes wait) loses nothing; a reader that stopped
    /// altogether costs lines instead, never the workers' progress.
    pub(crate) fn congested(&self) -> bool {
        self.pending.len() >= PENDING_MAX / 2 && self.progress.elapsed() < ALIVE
    }

    /// When to try [`Console::flush`] again: soon after a stall began, less
    /// often once it lasts (a terminal stopped with Ctrl-S), never when
    /// nothing is pending.
    pub(crate) fn retry_in(&self) -> Option<Duration> {
        let since = self.stalled?;
        Some(if since.elapsed() < Duration::from_secs(1) {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(100)
        })
    }

    fn decorate(&self, prio: u8, line: &[u8], buf: &mut Vec<u8>) {
        if self.journal {
            buf.extend_from_slice(format!("<{prio}>").as_bytes());
        }
        match self.colour.then(|| level_span(line)).flatten() {
            Some((a, b)) => {
                let colour: &[u8] = match prio {
                    0..=3 => b"\x1b[31m",
                    4 => b"\x1b[33m",
                    5 | 6 => b"\x1b[32m",
                    _ => b"\x1b[2m",
                };
                buf.extend_from_slice(&line[..a]);
                buf.extend_from_slice(colour);
                buf.extend_from_slice(&line[a..b]);
                buf.extend_from_slice(b"\x1b[0m");
                buf.extend_from_slice(&line[b..]);
            }
            None => buf.extend_from_slice(line),
        }
    }
}

/// Where the level is in a text line (`2026-11-23T21:19:34.123Z  INFO [`):
/// bytes 25 to 30. `None` for JSON and anything else.
fn level_span(line: &[u8]) -> Option<(usize, usize)> {
    (line.len() > 32 && line[0].is_ascii_digit() && line[23] == b'Z' && line[30] == b' ' && line[31] == b'[')
        .then_some((25, 30))
}

/// One `write`, retried on `EINTR` only.
fn write_some(out: &Out, buf: &[u8]) -> io::Result<usize> {
    loop {
        match out.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Whether `file` is the stream journald gave this service:
/// `JOURNAL_STREAM` is `DEVICE:INODE` of it (systemd sets it for a unit
/// whose stdout or stderr goes to the journal; the descriptor is compared,
/// as systemd advises, so a child whose stderr was redirected elsewhere
/// does not prefix its lines).
pub(crate) fn under_journald(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    file.metadata().is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// A worker's end of its relay pipe to the parent: a line is written
/// whole (the pipe is this process's alone, so a line longer than
/// `PIPE_BUF` written in parts is still not interleaved with another's),
/// blocking: the parent reads it within its flow budget, which is how a
/// worker that logs faster than the parent may write is slowed down.
pub(crate) struct Relay(pub(crate) File);

impl Relay {
    /// `<prio>line` (the line ends with its newline); errors (the parent
    /// is gone) are ignored.
    pub(crate) fn put(&mut self, prio: u8, line: &[u8]) {
        let mut buf = Vec::with_capacity(line.len() + 4);
        buf.extend_from_slice(format!("<{prio}>").as_bytes());
        buf.extend_from_slice(line);
        let _ = self.0.write_all(&buf);
    }
}

/// A relayed line as the parent reads it: its priority and the line.
pub(crate) fn parse_relayed(line: &str) -> (u8, &str) {
    if let Some(rest) = line.strip_prefix('<') {
        if let Some((p, line)) = rest.split_once('>') {
            if let Ok(p) = p.parse::<u8>() {
                return (p.min(7), line);
            }
        }
    }
    (6, line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    fn notice(n: u64) -> Vec<u8> {
        format!("{n} lost\n").into_bytes()
    }

    #[test]
    fn a_full_pipe_gets_whole_lines_later_and_the_rest_is_counted() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut c = Console::new(super::super::writer_of(w.as_fd()).unwrap());
        // 64 KiB pipe, 6 KiB lines: the 11th is taken in part.
        let line = |i: usize| format!("{i:05} {}\n", "x".repeat(6000)).into_bytes();
        let mut n = 0;
        while c.pending.len() + 6007 <= PENDING_MAX {
            c.put(6, &line(n), &notice);
            n += 1;
        }
        assert!(c.retry_in().is_some());
        assert!(
            c.congested(),
            "a reader that took bytes a moment ago is slow: hold the workers"
        );
        let progress = c.progress;
        c.progress = Instant::now() - ALIVE;
        assert!(
            !c.congested(),
            "a reader silent for {ALIVE:?} is gone: drop rather than hold"
        );
        c.progress = progress;
        c.put(6, &line(n), &notice); // does not fit: lost
        assert_eq!(c.lost, 1);
        // The reader comes back.
        let mut reader = File::from(r);
        nix::fcntl::fcntl(
            &reader,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 65536];
        for _ in 0..100_000 {
            c.flush();
            match reader.read(&mut chunk) {
                Ok(k) => got.extend_from_slice(&chunk[..k]),
                Err(_) if c.pending.is_empty() => break,
                Err(_) => {}
            }
        }
        assert!(c.retry_in().is_none());
        c.put(6, b"after\n", &notice);
        let _ = reader.read_to_end(&mut got);
        let text = String::from_utf8(got).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), n + 2, "every kept line, the notice, the next");
        for (i, l) in lines[..n].iter().enumerate() {
            assert_eq!(l.as_bytes(), &line(i)[..6006], "line {i} whole");
        }
        assert_eq!(&lines[n..], ["1 lost", "after"]);
    }

    #[test]
    fn journald_and_terminal_decorations() {
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut c = Console::new(super::super::writer_of(w.as_fd()).unwrap());
        assert!(!c.journal && !c.colour, "a pipe, no JOURNAL_STREAM");
        let line = b"2026-11-23T21:19:34.123Z  WARN [42] parent: m\n";
        let mut buf = Vec::new();
        c.journal = true;
        c.decorate(4, line, &mut buf);
        assert_eq!(buf, b"<4>2026-11-23T21:19:34.123Z  WARN [42] parent: m\n");
        c.journal = false;
        c.colour = true;
        buf.clear();
        c.decorate(4, line, &mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "2026-11-23T21:19:34.123Z \x1b[33m WARN\x1b[0m [42] parent: m\n"
        );
        buf = Vec::new();
        c.decorate(4, b"{\"level\":\"warning\"}\n", &mut buf);
        assert_eq!(buf, b"{\"level\":\"warning\"}\n", "JSON is never coloured");
    }

    #[test]
    fn relayed_lines_carry_their_priority() {
        assert_eq!(parse_relayed("<3>boom"), (3, "boom"));
        assert_eq!(parse_relayed("plain"), (6, "plain"));
        assert_eq!(parse_relayed("<x>y"), (6, "<x>y"));
    }
}
