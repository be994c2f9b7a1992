//! Reading a config file without trusting it: bounded in size, and never
//! blocking on something that is not a regular file.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{ConfigError, ConfigErrorKind, Problem};

/// The largest config file read, in bytes. Real configs are a few KiB; a
/// bigger file is a mistake (`-c /dev/zero`, a log file) that must fail at
/// once rather than fill the memory.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The text of the config file at `path`.
///
/// It is opened non-blocking, so a FIFO without a writer cannot hang the
/// caller, and it must be a regular file: a FIFO, a device or a directory
/// is refused before anything is read (the daemon re-reads its file on
/// every `reload`, which only a file allows). Errors: `Unreadable` (exit
/// 66) when it cannot be opened or is not a file, `Invalid` (exit 78) when
/// it is larger than [`MAX_CONFIG_BYTES`] or not UTF-8.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    read_as(path, "config file")
}

/// [`read`] for a file the config names (`workers.env_file`), called
/// `label` in the errors.
pub(super) fn read_as(path: &Path, label: &str) -> Result<String, ConfigError> {
    let unreadable = |what: String| {
        ConfigError::unreadable(Problem::message(format!("cannot read {label}: {what}")).in_file(path))
    };
    let invalid = |what: String| ConfigError {
        kind: ConfigErrorKind::Invalid,
        problems: vec![Problem::message(what).in_file(path)],
    };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| unreadable(e.to_string()))?;
    let meta = file.metadata().map_err(|e| unreadable(e.to_string()))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_char_device() || ft.is_block_device() {
                "a device"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        };
        return Err(unreadable(format!("it is {what}, not a regular file")));
    }
    let too_big = || {
        invalid(format!(
            "the file is larger than {} KiB (the most rookery reads); is it the right file?",
            MAX_CONFIG_BYTES / 1024
        ))
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    // The size can change while it is read (and /proc files say 0): the
    // bound is on what is read, not on what stat said.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        invalid(format!(
            "the file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("rookery-config-source-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir(&p);
        p
    }

    #[test]
    fn a_regular_file_is_read() {
        let p = temp("ok");
        std::fs::write(&p, "[workers]\ncount = 2\n").unwrap();
        assert_eq!(read(&p).unwrap(), "[workers]\ncount = 2\n");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn missing_directory_fifo_and_device_are_unreadable_at_once() {
        let e = read(Path::new("/nonexistent/rookery.toml")).unwrap_err();
        assert_eq!(e.kind, ConfigErrorKind::Unreadable);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/rookery.toml: cannot read config file"),
            "{e}"
        );

        let e = read(Path::new("/tmp")).unwrap_err();
        assert_eq!(e.kind, ConfigErrorKind::Unreadable);
        assert!(e.to_string().contains("a directory"), "{e}");

        // A FIFO nobody writes to: would block a plain open for ever.
        let p = temp("fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        std::fs::remove_file(&p).unwrap();

        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
    }

    #[test]
    fn a_huge_file_is_refused_without_reading_it_all() {
        let p = temp("huge");
        let f = File::create(&p).unwrap();
        // Sparse: 1 GiB that takes no disk space.
        f.set_len(1 << 30).unwrap();
        let e = read(&p).unwrap_err();
        assert_eq!(e.kind, ConfigErrorKind::Invalid);
        assert!(e.to_string().contains("larger than 1024 KiB"), "{e}");
        // Exactly the limit is still read.
        f.set_len(MAX_CONFIG_BYTES).unwrap();
        assert_eq!(read(&p).unwrap().len() as u64, MAX_CONFIG_BYTES);
        std::fs::remove_file(&p).unwrap();
    }
}
