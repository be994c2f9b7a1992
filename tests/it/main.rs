//! The integration tests: one binary, one module per area.

mod beanstalk_client;
mod servers;
mod titles;
