//! rookery's test kit, shared by the integration tests (`tests/it`) and the
//! bench: temporary directories, the daemon fixture, real queue servers and
//! `/proc` helpers. Not published.
//!
//! Everything here runs the built binaries as real processes: nothing
//! forks inside the multi-threaded test harness, and nothing mocks the OS.
//! Waiting is polling with generous deadlines ([`wait_until`],
//! [`DEADLINE`]), never a fixed sleep.

pub mod fixture;
pub mod proc;
#[path = "../../../src/procfs.rs"]
pub mod procfs;
pub mod servers;
mod sys;
mod tempdir;
#[path = "../../../src/text.rs"]
#[allow(dead_code)]
mod text;
#[path = "../../../src/titles.rs"]
#[allow(dead_code)]
mod title_source;

/// Process titles: the library's `src/titles.rs`, compiled in for
/// `examples/titledemo.rs`, which shows them on a real process to the
/// tests in `tests/it/titles.rs` (the library keeps them private).
pub mod titles {
    pub use crate::title_source::{init, set, set_comm};
}

pub use fixture::*;
pub use proc::*;
pub use tempdir::TempDir;
