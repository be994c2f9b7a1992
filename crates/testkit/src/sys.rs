//! What `src/sys/proctitle.rs` needs of its parent module, for the titles
//! compiled into this crate (see [`crate::titles`]). The `unsafe` code is
//! the library's own file, with its SAFETY comments, compiled here too.
#![allow(unsafe_code)]

#[path = "../../../src/sys/proctitle.rs"]
pub mod proctitle;

/// How many threads this process has.
pub fn thread_count() -> Option<usize> {
    crate::procfs::thread_count()
}
