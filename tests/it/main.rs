//! The integration tests: one binary, one module per area. Every test runs
//! built binaries as real processes (no fork inside this harness).

mod beanstalk_client;
mod config_errors;
mod core;
mod env;
mod external;
mod generate;
mod guard;
mod health;
mod kubernetes;
mod lifecycle;
mod limits;
mod metrics;
mod never_stalls;
mod observe;
mod operations;
mod privileges;
mod queues;
mod servers;
mod spawn;
mod titles;
mod util;
mod watch;
mod worker_io;
