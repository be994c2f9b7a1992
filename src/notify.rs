//! systemd notifications (`READY=1`, `STATUS=...`, `WATCHDOG=1`) that can
//! never block the parent.
//!
//! `sd_notify::notify` sends on a blocking datagram socket. A Unix datagram
//! sender waits when the receiver's queue is full, so a service manager (or
//! whatever `NOTIFY_SOCKET` names: a stuck helper, a socket another local
//! user bound) that stops reading would freeze the parent's loop in the
//! middle of a `STATUS=` update. Here every message goes out with
//! `MSG_DONTWAIT` on a non-blocking socket: when it cannot be queued at
//! once it is dropped (the next status or watchdog message supersedes it)
//! and the error is returned. `NotifyState` from the `sd-notify` crate is
//! still used to spell the messages.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use nix::sys::socket::{sendto, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

pub use sd_notify::NotifyState;

/// Sends `states` to `$NOTIFY_SOCKET`, if set, without ever blocking.
/// `Ok` when there is no such socket; `WouldBlock` when the receiver's
/// queue is full (the message is dropped).
pub fn send(states: &[NotifyState<'_>]) -> io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(addr) if !addr.is_empty() => send_to(&addr, &message(states)),
        _ => Ok(()),
    }
}

/// The datagram for `states`: one `KEY=VALUE` per line.
pub fn message(states: &[NotifyState<'_>]) -> String {
    let mut msg = String::new();
    for s in states {
        msg.push_str(&s.to_string());
        msg.push('\n');
    }
    msg
}

/// Sends one datagram to the notify socket at `addr` (a path, or `@name`
/// for an abstract socket), without blocking.
pub fn send_to(addr: &OsStr, msg: &str) -> io::Result<()> {
    let bytes = addr.as_bytes();
    let to = match bytes.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(bytes)?,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let sent = sendto(
        sock.as_raw_fd(),
        msg.as_bytes(),
        &to,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )?;
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notify datagram cut short",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::mpsc;
    use std::time::Duration;

    fn socket_path(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rookery-notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("notify.sock")
    }

    #[test]
    fn messages_are_one_state_per_line() {
        assert_eq!(
            message(&[NotifyState::Ready, NotifyState::Status("2 workers")]),
            "READY=1\nSTATUS=2 workers\n"
        );
    }

    #[test]
    fn a_message_reaches_a_listening_socket() {
        let path = socket_path("ok");
        let rx = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_receiver_that_does_not_read_never_blocks_the_sender() {
        let path = socket_path("full");
        let _rx = UnixDatagram::bind(&path).unwrap();
        let (done, finished) = mpsc::channel();
        let p = path.clone();
        // In a thread, so a blocking send fails the test instead of hanging it.
        std::thread::spawn(move || {
            let mut results = Vec::new();
            // Far more than the receive queue holds (max_dgram_qlen and
            // the socket buffer): the queue fills, then sends must fail.
            for _ in 0..5000 {
                results.push(send_to(p.as_os_str(), &"WATCHDOG=1\n".repeat(50)));
            }
            let _ = done.send(results);
        });
        let results = finished
            .recv_timeout(Duration::from_secs(20))
            .expect("sending to a full notify socket blocked");
        let first_err = results
            .iter()
            .position(Result::is_err)
            .expect("the queue never filled");
        assert!(first_err > 0, "the first message should have been queued");
        assert_eq!(
            results[first_err].as_ref().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn no_socket_no_error_and_bad_addresses_are_errors() {
        assert!(send_to(OsStr::new("/nonexistent/rookery/notify.sock"), "READY=1\n").is_err());
        let long = "x".repeat(200);
        assert!(send_to(OsStr::new(&long), "READY=1\n").is_err());
    }
}
