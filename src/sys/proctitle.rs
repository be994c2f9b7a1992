//! Process titles: rewriting the argv area so `ps` shows a chosen title.
//!
//! # Theory of operation
//!
//! The kernel builds a new process's stack with the argument strings and,
//! right after them, the environment strings, and records where they lie
//! (`arg_start`, `arg_end`, `env_start`, `env_end`: fields 48 to 51 of
//! `/proc/self/stat`). `/proc/PID/cmdline`, and so `ps` and `top -c`, read
//! that memory: the bytes of `[arg_start, arg_end)` as they are, or, when the
//! last byte of that range is not NUL, the one string starting at
//! `arg_start`, up to its NUL, even if it runs on into the environment area
//! (the convention `setproctitle` relies on).
//!
//! [`init`] makes the whole of `[arg_start, env_end)` free for a title: it
//! copies every environment string found there to the heap and repoints the
//! `environ` array at the copies (so `getenv`, [`std::env::var`] and spawned
//! children see the same environment), and does the same for the `argv`
//! array (found at the stack start the kernel reports, field 28), so that
//! [`std::env::args_os`] keeps returning the original arguments. It moves
//! nothing if the process has more than one thread.
//!
//! [`set`] writes the title at `arg_start` and NUL-fills the rest of the
//! area, so no trace of the old command line is left. If the title is
//! shorter than the old arguments, it also puts a non-NUL byte at
//! `arg_end - 1`, after the title's NUL: the kernel then reports the title
//! alone, without a tail of NULs.
//!
//! Pointers into the old strings kept from before [`init`] (from C's
//! `getenv`, or glibc's `program_invocation_name`) see the title afterwards.

use std::ffi::{c_char, CStr, CString};
use std::sync::{Mutex, Once};

use crate::text::floor_char_boundary;

extern "C" {
    /// The C library's environment: a NULL-terminated array of pointers to
    /// `NAME=value` strings.
    static mut environ: *mut *mut c_char;
}

/// The longest name the kernel keeps for `comm` (`TASK_COMM_LEN` - 1).
const COMM_MAX: usize = 15;

/// The byte left at `arg_end - 1` to tell the kernel the title is one string.
const MARKER: u8 = b' ';

/// Where this process's argument and environment strings lie, from
/// `/proc/self/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Field 28: the address of `argc`, followed by the `argv` array.
    start_stack: usize,
    /// Field 48.
    arg_start: usize,
    /// Field 49.
    arg_end: usize,
    /// Field 50.
    env_start: usize,
    /// Field 51.
    env_end: usize,
}

impl Layout {
    /// Parses the contents of `/proc/self/stat`.
    fn parse(stat: &str) -> Option<Layout> {
        let fields = crate::procfs::StatFields::parse(stat)?;
        let field = |n: usize| -> Option<usize> { fields.num(n) };
        Some(Layout {
            start_stack: field(28)?,
            arg_start: field(48)?,
            arg_end: field(49)?,
            env_start: field(50)?,
            env_end: field(51)?,
        })
    }

    /// The area a title may use, if the layout is sane.
    fn area(&self) -> Option<Area> {
        if self.arg_start == 0 || self.arg_end <= self.arg_start {
            return None;
        }
        // The kernel lets a title run on only into an environment area that
        // directly follows the arguments.
        let end = if self.env_start == self.arg_end && self.env_end > self.env_start {
            self.env_end
        } else {
            self.arg_end
        };
        Some(Area {
            start: self.arg_start,
            arg_len: self.arg_end - self.arg_start,
            len: end - self.arg_start,
        })
    }
}

/// The memory `set` writes titles into. Addresses are kept as integers so
/// the static holding it is `Sync`; only `set` turns them into a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Area {
    /// `arg_start`.
    start: usize,
    /// `arg_end - arg_start`.
    arg_len: usize,
    /// The whole area, `end - arg_start`, with `arg_len <= len`.
    len: usize,
}

impl Area {
    fn contains(&self, addr: usize) -> bool {
        addr >= self.start && addr - self.start < self.len
    }
}

/// The claimed area, once [`init`] has succeeded. The lock also keeps two
/// threads from writing titles at once.
static AREA: Mutex<Option<Area>> = Mutex::new(None);

/// Claims the argv area; call once at start, before any thread exists.
///
/// Copies the environment strings (and the argument strings) out of the
/// area to the heap, so [`std::env::var`], [`std::env::args_os`] and
/// children keep working. Idempotent. Does nothing if `/proc` is missing or
/// the process has more than one thread; [`set`] then only sets `comm`.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Some(area) = claim() {
            *AREA.lock().unwrap_or_else(|e| e.into_inner()) = Some(area);
        }
    });
}

/// Finds the area and moves the strings out of it.
fn claim() -> Option<Area> {
    // Repointing `environ` and `argv` races with any other thread reading
    // them: refuse unless this is the only thread.
    if super::thread_count() != Some(1) {
        return None;
    }
    let layout = Layout::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let area = layout.area()?;
    move_environ(&area);
    move_argv(&layout, &area);
    Some(area)
}

/// Repoints every `environ` entry that points into `area` at a heap copy.
fn move_environ(area: &Area) {
    // SAFETY: the process is single-threaded (checked by `claim`), so no one
    // else reads or changes `environ` meanwhile. `environ` is either null or
    // the C library's NULL-terminated array of pointers to NUL-terminated
    // strings, which we read up to its terminator and whose entries we
    // replace with other valid, never-freed C strings (leaked `CString`s);
    // the C library does not free strings it did not allocate. We copy the
    // pointer value out of the `static mut`, never taking a reference to it.
    unsafe {
        let mut entry = environ;
        if entry.is_null() {
            return;
        }
        while !(*entry).is_null() {
            if area.contains(*entry as usize) {
                *entry = CStr::from_ptr(*entry).to_owned().into_raw();
            }
            entry = entry.add(1);
        }
    }
}

/// Repoints the `argv` array's entries at heap copies, so the standard
/// library (which keeps a pointer to that array and reads it on every
/// [`std::env::args_os`]) still sees the original arguments. Skipped unless
/// the stack start from the kernel holds exactly the `argc` and `argv` that
/// describe `[arg_start, arg_end)`.
fn move_argv(layout: &Layout, area: &Area) {
    let word = std::mem::size_of::<usize>();
    let base = layout.start_stack;
    // Everything read lies in [start_stack, arg_start): the initial stack,
    // one mapping, never unmapped while the process lives.
    let readable = |words: usize| {
        base != 0
            && base.is_multiple_of(word)
            && words
                .checked_mul(word)
                .and_then(|n| base.checked_add(n))
                .is_some_and(|end| end <= layout.arg_start)
    };
    if !readable(1) {
        return;
    }
    // SAFETY: `base` is aligned, non-null and `base + word <= arg_start`;
    // both addresses are in the initial stack mapping, so the word is
    // mapped and readable. Single-threaded: no one writes it meanwhile.
    let argc = unsafe { *(base as *const usize) };
    // argc, argv[0..argc] and the NULL that ends argv.
    if argc == 0 || argc > area.arg_len || !readable(argc.saturating_add(2)) {
        return;
    }
    let argv = (base + word) as *mut *mut c_char;
    let in_args = |p: *mut c_char| (layout.arg_start..layout.arg_end).contains(&(p as usize));
    // SAFETY: `readable(argc + 2)` holds, so argv[0..=argc] lie in
    // [start_stack, arg_start) inside the initial stack mapping, aligned.
    // They are written only after checking they are exactly the argv of
    // this process: argv[0] at arg_start, every entry inside the argument
    // strings, then NULL. Each entry is replaced by a valid, never-freed C
    // string. The process is single-threaded (checked by `claim`), and the
    // standard library reads this array only through raw pointers, when
    // `args_os` is called, so no reference to it is alive.
    unsafe {
        if *argv as usize != layout.arg_start || !(*argv.add(argc)).is_null() {
            return;
        }
        if !(0..argc).all(|i| in_args(*argv.add(i))) {
            return;
        }
        for i in 0..argc {
            let arg = argv.add(i);
            *arg = CStr::from_ptr(*arg).to_owned().into_raw();
        }
    }
}

/// Sets the title shown by `ps`, and the short `comm` name.
///
/// Titles longer than the area (the original command line and environment)
/// are cut, at a character boundary; a title stops at its first NUL.
/// `comm` is left alone (set it once with [`set_comm`]: a title that
/// changes on every job then costs no system call). Without a successful
/// [`init`], there is no area and `comm` gets the title's first 15 bytes.
/// In a forked child, changes only the child's title.
pub fn set(title: &str) {
    let guard = AREA.lock().unwrap_or_else(|e| e.into_inner());
    let Some(area) = *guard else {
        drop(guard);
        set_comm(title);
        return;
    };
    // SAFETY: `init` moved every string the process uses out of
    // [start, start + len): the environment and (when it could) argv now
    // point to heap copies, so nothing in the program holds a reference to
    // these bytes, which lie in the initial stack mapping (writable, never
    // unmapped). The lock held until the end of this function keeps two
    // `set`s from overlapping. In a forked child the same addresses are the
    // child's own copy of the memory.
    let bytes = unsafe { std::slice::from_raw_parts_mut(area.start as *mut u8, area.len) };
    render(bytes, area.arg_len, title);
}

/// Writes `title` into `area` (the argument strings, `arg_len` bytes, then
/// the environment strings) so the kernel reports exactly the title, and
/// returns how many bytes of the title were kept.
fn render(area: &mut [u8], arg_len: usize, title: &str) -> usize {
    let title = title.split('\0').next().unwrap_or_default();
    let kept = floor_char_boundary(title, area.len().saturating_sub(1));
    area[..kept].copy_from_slice(&title.as_bytes()[..kept]);
    area[kept..].fill(0);
    // With a NUL at arg_end - 1 the kernel reports all of the old argument
    // bytes, the title and then NULs; with another byte there it reports
    // the string at arg_start only. (A title one byte shorter than the old
    // arguments ends with its NUL there, and is reported with that NUL.)
    if kept + 1 < arg_len && arg_len <= area.len() {
        area[arg_len - 1] = MARKER;
    }
    kept
}

/// Sets the calling thread's `comm` name (the main thread's is the
/// process's, shown by `top`, `ps -o comm` and matched by `pkill`): the
/// first 15 bytes of `name`, cut at a character boundary and at a NUL.
pub fn set_comm(name: &str) {
    let name = name.split('\0').next().unwrap_or_default();
    let name = &name[..floor_char_boundary(name, COMM_MAX)];
    if let Ok(name) = CString::new(name) {
        // A failure only leaves the old name: nothing to report.
        let _ = nix::sys::prctl::set_name(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
        0 0 0 0 20 0 1 0 12345 1000000 200 18446744073709551615 1 1 \
        140737488347136 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0 0 0 0 \
        140737488350000 140737488350100 140737488350100 140737488351000 0\n";

    #[test]
    fn parses_stat_with_odd_comm() {
        let layout = Layout::parse(STAT).unwrap();
        assert_eq!(
            layout,
            Layout {
                start_stack: 140737488347136,
                arg_start: 140737488350000,
                arg_end: 140737488350100,
                env_start: 140737488350100,
                env_end: 140737488351000,
            }
        );
        let area = layout.area().unwrap();
        assert_eq!((area.arg_len, area.len), (100, 1000));
    }

    #[test]
    fn env_area_used_only_when_it_follows_args() {
        let layout = Layout {
            start_stack: 8,
            arg_start: 100,
            arg_end: 150,
            env_start: 160,
            env_end: 400,
        };
        assert_eq!(layout.area().unwrap().len, 50);
        let empty = Layout {
            arg_end: 100,
            ..layout
        };
        assert_eq!(empty.area(), None);
    }

    #[test]
    fn parse_rejects_short_stat() {
        assert_eq!(Layout::parse("1 (x) S 1 2 3"), None);
    }

    /// What the kernel reports for `area`, per fs/proc/base.c.
    fn cmdline(area: &[u8], arg_len: usize) -> &[u8] {
        if area[arg_len - 1] == 0 {
            &area[..arg_len]
        } else {
            let n = area.iter().position(|&b| b == 0).unwrap_or(area.len());
            &area[..n]
        }
    }

    #[test]
    fn short_title_reads_exactly() {
        let mut area = *b"./prog\0--long-option\0value\0A=1\0B=2\0";
        assert_eq!(render(&mut area, 27, "hi"), 2);
        assert_eq!(cmdline(&area, 27), b"hi");
        assert!(area[2..].iter().all(|&b| b == 0 || b == MARKER));
    }

    #[test]
    fn long_title_runs_into_env_area() {
        let mut area = *b"./p\0x\0HOME=/root\0PATH=/bin\0";
        let title = "daemon: worker 12 idle";
        assert!(title.len() > 6);
        render(&mut area, 6, title);
        assert_eq!(cmdline(&area, 6), title.as_bytes());
        assert!(area[title.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn title_too_long_is_cut_at_char_boundary() {
        let mut area = [1u8; 7];
        assert_eq!(render(&mut area, 4, "abcdeé-more"), 5);
        assert_eq!(cmdline(&area, 4), b"abcde");
        assert_eq!(area[5..], [0, 0]);
    }

    #[test]
    fn title_one_shorter_than_args_keeps_one_nul() {
        let mut area = *b"abcd\0XY\0";
        render(&mut area, 5, "wxyz");
        assert_eq!(cmdline(&area, 5), b"wxyz\0");
    }

    #[test]
    fn title_stops_at_nul() {
        let mut area = [7u8; 16];
        assert_eq!(render(&mut area, 16, "ab\0cd"), 2);
        assert_eq!(cmdline(&area, 16), b"ab");
    }

    #[test]
    fn comm_cut() {
        assert_eq!(floor_char_boundary("demodaemon: worker", COMM_MAX), 15);
        assert_eq!(floor_char_boundary("ééééééééé", COMM_MAX), 14);
    }
}
