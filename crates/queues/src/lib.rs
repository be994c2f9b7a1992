//! Support code for rookery's queue examples, shared by the examples, the
//! integration tests and the bench: a small blocking [Beanstalkd
//! client](beanstalk) and a `/proc` reader. Not published, and not part of the `rookery`
//! library: a daemon author picks their own queue client.

pub mod beanstalk;
// The library's one `/proc` reader, compiled in (it imports only `std`
// and `nix`): the Redis example tells a live owner of a processing list
// from a dead one by its start time.
#[path = "../../../src/procfs.rs"]
pub mod procfs;
