//! The bounded, non-blocking connection table behind the parent's two
//! servers (the control socket and the metrics endpoint).
//!
//! Both serve one request per connection from the parent's single thread,
//! so both need the same guarantees: at most `max` connections (a new one
//! evicts the oldest that has not sent its request yet, so silent clients
//! cannot lock anyone out), a deadline per connection, a bounded request
//! buffer, and answers written without blocking (the rest when the client
//! reads, or dropped at the deadline). The servers differ only in what a
//! complete request is and how an answer is encoded.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

/// A connected, non-blocking stream the table can read and write.
pub(crate) trait Socket: AsFd {
    /// `read(2)` on the shared descriptor.
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// `write(2)` on the shared descriptor.
    fn write_some(&self, buf: &[u8]) -> io::Result<usize>;
}

impl Socket for std::os::unix::net::UnixStream {
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &*self, buf)
    }
    fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &*self, buf)
    }
}

impl Socket for std::net::TcpStream {
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &*self, buf)
    }
    fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &*self, buf)
    }
}

struct Conn<S> {
    stream: S,
    deadline: Instant,
    state: State,
}

enum State {
    /// Collecting the request.
    Reading(Vec<u8>),
    /// Sending the answer from this offset.
    Writing(Vec<u8>, usize),
}

/// What reading a connection gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read<T> {
    /// Nothing complete yet (or an answer is still being sent).
    Pending,
    /// A complete request.
    Request(T),
    /// Closed: by the client, on an error, or past the size limit.
    Closed,
}

/// Room for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    /// There is room; `evicted`: the connection closed to make it.
    Made {
        /// Its token.
        evicted: Option<u64>,
    },
    /// Every connection is being answered: the new one must be dropped.
    Full,
}

/// The connections of one server, by epoll token.
pub(crate) struct Conns<S> {
    conns: HashMap<u64, Conn<S>>,
    max: usize,
    lifetime: Duration,
}

impl<S: Socket> Conns<S> {
    /// At most `max` connections, each closed `lifetime` after it came.
    pub(crate) fn new(max: usize, lifetime: Duration) -> Conns<S> {
        Conns {
            conns: HashMap::new(),
            max,
            lifetime,
        }
    }

    /// Makes room for one more: past the cap, the oldest connection still
    /// waiting for its request is closed.
    pub(crate) fn make_room(&mut self) -> Room {
        if self.conns.len() < self.max {
            return Room::Made { evicted: None };
        }
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Reading(_)))
            .min_by_key(|(t, c)| (c.deadline, **t))
            .map(|(t, _)| *t);
        match oldest {
            Some(t) => {
                self.conns.remove(&t);
                Room::Made { evicted: Some(t) }
            }
            None => Room::Full,
        }
    }

    /// Adds a connection (call [`Conns::make_room`] first).
    pub(crate) fn insert(&mut self, token: u64, stream: S, now: Instant) {
        let conn = Conn {
            stream,
            deadline: now + self.lifetime,
            state: State::Reading(Vec::new()),
        };
        self.conns.insert(token, conn);
    }

    /// The descriptor of connection `token`, to watch.
    pub(crate) fn fd(&self, token: u64) -> Option<BorrowedFd<'_>> {
        self.conns.get(&token).map(|c| c.stream.as_fd())
    }

    /// The open connections' descriptors: a forked worker must close them,
    /// or a client would never see its connection end.
    pub(crate) fn raw_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.conns.values().map(|c| c.stream.as_fd().as_raw_fd())
    }

    /// Whether connection `token` has an answer still to send.
    pub(crate) fn is_writing(&self, token: u64) -> bool {
        self.conns
            .get(&token)
            .is_some_and(|c| matches!(c.state, State::Writing(..)))
    }

    /// Whether `token` names an open connection.
    #[cfg(test)]
    pub(crate) fn owns(&self, token: u64) -> bool {
        self.conns.contains_key(&token)
    }

    /// Open connections.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Reads what connection `token` has, without blocking, until
    /// `complete` finds a request in the bytes so far. More than `limit`
    /// bytes without one closes the connection.
    pub(crate) fn read<T>(
        &mut self,
        token: u64,
        limit: usize,
        mut complete: impl FnMut(&[u8]) -> Option<T>,
    ) -> Read<T> {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Read::Closed;
        };
        let State::Reading(buf) = &mut conn.state else {
            // Writing: a readable socket now means the client hung up or
            // sent more; the answer is still sent.
            return Read::Pending;
        };
        let mut chunk = [0u8; 2048];
        loop {
            match conn.stream.read_some(&mut chunk) {
                Ok(0) => {
                    self.conns.remove(&token);
                    return Read::Closed;
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(request) = complete(buf) {
                        return Read::Request(request);
                    }
                    if buf.len() > limit {
                        self.conns.remove(&token);
                        return Read::Closed;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.conns.remove(&token);
                    return Read::Closed;
                }
            }
        }
    }

    /// Queues `answer` and sends what the socket takes now. True while some
    /// is left to send (watch the connection for writing).
    pub(crate) fn reply(&mut self, token: u64, answer: Vec<u8>) -> bool {
        let Some(conn) = self.conns.get_mut(&token) else {
            return false;
        };
        conn.state = State::Writing(answer, 0);
        self.writable(token)
    }

    /// Sends more of a queued answer. True while some is left; the
    /// connection is closed once all is sent (or the client is gone).
    pub(crate) fn writable(&mut self, token: u64) -> bool {
        let Some(conn) = self.conns.get_mut(&token) else {
            return false;
        };
        let State::Writing(buf, pos) = &mut conn.state else {
            return false;
        };
        while *pos < buf.len() {
            match conn.stream.write_some(&buf[*pos..]) {
                Ok(0) => break,
                Ok(n) => *pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.conns.remove(&token);
        false
    }

    /// Closes connections past their deadline; returns their tokens.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<u64> {
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in &late {
            self.conns.remove(t);
        }
        late
    }

    /// The earliest connection deadline, if any connection is open.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(|c| c.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_oldest_silent_connection_makes_room_and_deadlines_close_them() {
        let mut c: Conns<UnixStream> = Conns::new(2, Duration::from_secs(2));
        let now = Instant::now();
        let mut peers = Vec::new();
        for t in 0..2u64 {
            assert_eq!(c.make_room(), Room::Made { evicted: None });
            let (a, b) = UnixStream::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            c.insert(t, a, now + Duration::from_millis(t));
            peers.push(b);
        }
        assert_eq!(c.make_room(), Room::Made { evicted: Some(0) });
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.next_deadline(),
            Some(now + Duration::from_millis(1) + Duration::from_secs(2))
        );
        assert_eq!(c.expire(now + Duration::from_secs(3)), vec![1]);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_request_is_read_whole_and_an_oversized_one_closes() {
        let mut c: Conns<UnixStream> = Conns::new(4, Duration::from_secs(2));
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        c.insert(1, a, Instant::now());
        let line = |buf: &[u8]| buf.iter().position(|x| *x == b'\n').map(|i| buf[..i].to_vec());
        io::Write::write_all(&mut b, b"half").unwrap();
        assert_eq!(c.read(1, 16, line), Read::Pending);
        io::Write::write_all(&mut b, b" a line\n").unwrap();
        assert_eq!(c.read(1, 16, line), Read::Request(b"half a line".to_vec()));
        assert!(!c.reply(1, b"ok\n".to_vec()), "all sent at once: closed");
        assert!(!c.owns(1));

        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        c.insert(2, a, Instant::now());
        io::Write::write_all(&mut b, &[b'x'; 64]).unwrap();
        assert_eq!(c.read(2, 16, line), Read::Closed, "over the limit");
        assert!(!c.owns(2));
    }
}
