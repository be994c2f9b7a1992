//! rookery: multi-process worker daemons on Linux.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod exit;
pub mod generate;
pub mod logging;
pub mod pool;
pub mod scoreboard;
mod sys;
pub mod titles;
