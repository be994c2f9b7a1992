//! Exit codes, with the meanings operators and init systems expect.

/// Success.
pub const OK: u8 = 0;
/// A runtime failure (the daemon could not start, or stopped on a crash loop).
pub const FAILURE: u8 = 1;
/// LSB `status`: the daemon is not running.
pub const NOT_RUNNING: u8 = 3;
/// sysexits EX_USAGE: the command line is wrong.
pub const USAGE: u8 = 64;
/// sysexits EX_NOINPUT: an input file (the config) does not exist or cannot be read.
pub const NOINPUT: u8 = 66;
/// sysexits EX_UNAVAILABLE: a service the command needs is unavailable
/// (the daemon does not answer on its control socket).
pub const UNAVAILABLE: u8 = 69;
/// sysexits EX_SOFTWARE: an internal error.
pub const SOFTWARE: u8 = 70;
/// sysexits EX_OSERR: an operating system error (fork, pipe, signals).
pub const OSERR: u8 = 71;
/// sysexits EX_CANTCREAT: an output file cannot be written.
pub const CANTCREAT: u8 = 73;
/// sysexits EX_TEMPFAIL: a temporary failure; trying again later may work
/// (another instance still holds the lock).
pub const TEMPFAIL: u8 = 75;
/// sysexits EX_NOPERM: not allowed (control socket of another user).
pub const NOPERM: u8 = 77;
/// sysexits EX_CONFIG: the configuration is wrong.
pub const CONFIG: u8 = 78;

/// Exit status of a worker whose `init` failed (told apart from a crash in
/// the log, handled like any other failure).
pub const WORKER_INIT_FAILED: i32 = 3;
/// Exit status of a worker child that could not be set up before user code.
pub const WORKER_SETUP_FAILED: i32 = 121;

/// The sysexits code for a failed system call: one mapping for every
/// command, so the same cause always gives the same code.
///
/// Permission problems are [`NOPERM`]; a missing file is [`NOINPUT`]; a
/// daemon that does not answer (refused, reset, timed out) is
/// [`UNAVAILABLE`]; a full or read-only file system is [`CANTCREAT`]; a
/// resource that is busy for now (an address in use) is [`TEMPFAIL`];
/// anything else is [`OSERR`].
pub fn from_io(e: &std::io::Error) -> u8 {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::PermissionDenied => return NOPERM,
        K::NotFound => return NOINPUT,
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::TimedOut
        | K::UnexpectedEof => return UNAVAILABLE,
        K::WouldBlock => return TEMPFAIL,
        _ => {}
    }
    match e.raw_os_error() {
        Some(libc::EPERM) => NOPERM,
        Some(libc::ENOTDIR) => NOINPUT,
        Some(libc::ENOSPC | libc::EDQUOT | libc::EROFS | libc::EEXIST | libc::EISDIR) => CANTCREAT,
        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR | libc::EADDRINUSE) => TEMPFAIL,
        _ => OSERR,
    }
}

/// The sysexits code for a file or socket the daemon failed to create or
/// open for writing (log, control socket): [`from_io`], except that a
/// missing or wrong directory, a directory or FIFO at the path, or a full
/// or read-only file system are all [`CANTCREAT`] (an output, not an
/// input, is missing). Permission stays [`NOPERM`], a busy resource
/// [`TEMPFAIL`], and a real system failure (no descriptors, no memory)
/// [`OSERR`].
pub fn from_create_io(e: &std::io::Error) -> u8 {
    match from_io(e) {
        NOPERM => NOPERM,
        TEMPFAIL => TEMPFAIL,
        OSERR if e.raw_os_error().is_some() => OSERR,
        _ => CANTCREAT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Error;

    #[test]
    fn system_errors_map_to_one_sysexits_code_each() {
        let os = Error::from_raw_os_error;
        assert_eq!(from_io(&os(libc::EACCES)), NOPERM);
        assert_eq!(from_io(&os(libc::EPERM)), NOPERM);
        assert_eq!(from_io(&os(libc::ENOENT)), NOINPUT);
        assert_eq!(from_io(&os(libc::ECONNREFUSED)), UNAVAILABLE);
        assert_eq!(from_io(&os(libc::ETIMEDOUT)), UNAVAILABLE);
        assert_eq!(from_io(&os(libc::ENOSPC)), CANTCREAT);
        assert_eq!(from_io(&os(libc::EROFS)), CANTCREAT);
        assert_eq!(from_io(&os(libc::EAGAIN)), TEMPFAIL);
        assert_eq!(from_io(&os(libc::EMFILE)), OSERR);
        assert_eq!(from_io(&Error::other("x")), OSERR);
        assert_eq!(from_io(&os(libc::EADDRINUSE)), TEMPFAIL);
    }

    #[test]
    fn outputs_that_cannot_be_created_are_73() {
        let os = Error::from_raw_os_error;
        for e in [
            libc::ENOENT,
            libc::ENOTDIR,
            libc::EISDIR,
            libc::ENOSPC,
            libc::EROFS,
        ] {
            assert_eq!(from_create_io(&os(e)), CANTCREAT, "errno {e}");
        }
        assert_eq!(from_create_io(&Error::other("a FIFO")), CANTCREAT);
        assert_eq!(from_create_io(&os(libc::EACCES)), NOPERM);
        assert_eq!(from_create_io(&os(libc::EADDRINUSE)), TEMPFAIL);
        assert_eq!(from_create_io(&os(libc::EMFILE)), OSERR);
    }
}
