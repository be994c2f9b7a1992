//! Durations written the way the config file writes them (`"250ms"`,
//! `"1m 30s"`, `"2h"`), for the daemon's own `[app]` settings:
//!
//! ```
//! use std::time::Duration;
//! use rookery::serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(crate = "rookery::serde")]
//! struct Settings {
//!     #[serde(with = "rookery::humantime")]
//!     poll_interval: Duration,
//! }
//!
//! let s: Settings = toml::from_str(r#"poll_interval = "250ms""#).unwrap();
//! assert_eq!(s.poll_interval, Duration::from_millis(250));
//! ```
//!
//! Parsed and printed by the `humantime` crate, as rookery's own keys are.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Reads a duration from a string such as `"250ms"` or `"1m 30s"`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    ::humantime::parse_duration(text.trim()).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

/// Writes a duration as a string such as `"1m 30s"` (what `check-config`
/// prints).
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&::humantime::format_duration(*d))
}
