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
mod tempdir;

pub use fixture::*;
pub use proc::*;
pub use tempdir::TempDir;
