//! The integration tests: one binary, one module per area. Every test runs
//! built binaries as real processes (no fork inside this harness).
//!
//! The fixture, the queue servers and the /proc helpers are the test kit
//! (crates/testkit), shared with the bench; `crate::util` and
//! `crate::servers` name it here.

use rookery_testkit as util;
use rookery_testkit::servers;

mod async_workers;
mod beanstalk_client;
mod cli;
mod config_errors;
mod core;
mod env;
mod external;
mod generated_files;
mod guard;
mod health;
mod kubernetes;
mod lifecycle;
mod limits;
mod logging;
mod metrics;
mod never_stalls;
mod observe;
mod operations;
mod pause;
mod privileges;
mod queues;
mod rabbitmq;
mod spawn;
mod titles;
mod upgrade;
mod watch;
mod worker_io;
