//! Registering a descriptor with the tokio runtime (the `tokio` feature).

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Watches `fd` for readability on the current tokio runtime, taking
/// ownership of it. Panics outside a runtime's context, or in one without
/// I/O enabled (tokio's rule).
pub fn watch_readable(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: tokio asks that the descriptor be valid and open, keep
    // referring to the same open file description for the AsyncFd's whole
    // life, and that `as_raw_fd` always return that descriptor. An
    // `OwnedFd` is a valid open descriptor that only its owner closes (on
    // drop); the AsyncFd owns it, so it stays open until the AsyncFd is
    // dropped, and its `as_raw_fd` returns the same number every time.
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    registered.map_err(|e| e.into_parts().1)
}
