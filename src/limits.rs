//! The workers' resource limits, nice value and OOM score, and the parent's
//! own descriptor limit (issue 13).
//!
//! `[workers] nice`, `oom_score_adj` and `rlimit_nofile`, `rlimit_core`,
//! `rlimit_as`, `rlimit_nproc` are set in every worker before any worker code
//! runs: in a forked Rust worker before `init`, in an external command
//! between fork and exec; a key left out leaves the worker with what it
//! inherits from the parent. A limit is one value for both the soft and
//! the hard limit (as systemd's `LimitNOFILE=N`), or `"SOFT:HARD"`; each a
//! number, or `"unlimited"` (`"infinity"` too); `rlimit_core` and `rlimit_as`
//! also take sizes like `"512MiB"`.
//!
//! `[daemon] rlimit_nofile` is the parent's own: `"hard"` (the default)
//! raises its soft limit to its hard limit, as it always did, so that a pool
//! of thousands of commands (three pipes each) fits; `"keep"` leaves what it
//! was started with; a limit sets exactly that. Workers inherit the
//! parent's unless `workers.rlimit_nofile` is set.

use std::fmt;

use crate::config::{parse_size, DaemonConfig, WorkersConfig};
use crate::sys::limits::{Prepared, Resource};

/// `RLIM_INFINITY`: no limit.
pub const UNLIMITED: u64 = u64::MAX;

/// Most negative and most positive nice values.
pub const NICE_RANGE: (i64, i64) = (-20, 19);
/// The range of `oom_score_adj`.
pub const OOM_SCORE_ADJ_RANGE: (i64, i64) = (-1000, 1000);

/// A resource limit: soft and hard, [`UNLIMITED`] for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// What the process gets.
    pub soft: u64,
    /// How far it may raise its soft limit (only privilege raises this).
    pub hard: u64,
}

impl Rlimit {
    /// Parses one limit value given as a string: `"4096"`, `"unlimited"`,
    /// `"1024:4096"`, or with `sizes`, `"512MiB"`.
    pub fn parse(s: &str, sizes: bool) -> Result<Rlimit, String> {
        let one = |v: &str| -> Result<u64, String> {
            let v = v.trim();
            if v.eq_ignore_ascii_case("unlimited") || v.eq_ignore_ascii_case("infinity") {
                return Ok(UNLIMITED);
            }
            if let Ok(n) = v.parse::<u64>() {
                return Ok(n);
            }
            match parse_size(v).filter(|_| sizes) {
                Some(n) => Ok(n),
                None if sizes => Err(format!(
                    "invalid limit {v:?}; expected a number, a size like \"512MiB\" or \"unlimited\""
                )),
                None => Err(format!("invalid limit {v:?}; expected a number or \"unlimited\"")),
            }
        };
        let r = match s.split_once(':') {
            Some((soft, hard)) => Rlimit {
                soft: one(soft)?,
                hard: one(hard)?,
            },
            None => {
                let v = one(s)?;
                Rlimit { soft: v, hard: v }
            }
        };
        if r.soft > r.hard {
            return Err(format!(
                "the soft limit ({}) is above the hard limit ({})",
                word(r.soft),
                word(r.hard)
            ));
        }
        Ok(r)
    }

    /// Both limits `n` (an integer in the file); negative is an error.
    pub fn from_int(n: i64) -> Result<Rlimit, String> {
        let n = u64::try_from(n).map_err(|_| format!("{n} is negative"))?;
        Ok(Rlimit { soft: n, hard: n })
    }

    /// As a systemd `Limit*=` value: `N`, `SOFT:HARD`, `infinity`.
    pub fn systemd(&self) -> String {
        let w = |v: u64| {
            if v == UNLIMITED {
                "infinity".to_string()
            } else {
                v.to_string()
            }
        };
        if self.soft == self.hard {
            w(self.soft)
        } else {
            format!("{}:{}", w(self.soft), w(self.hard))
        }
    }

    /// As a TOML value that [`Rlimit::parse`] reads back.
    pub fn toml(&self) -> String {
        if self.soft == self.hard && self.soft != UNLIMITED {
            self.soft.to_string()
        } else {
            format!("\"{self}\"")
        }
    }
}

fn word(v: u64) -> String {
    if v == UNLIMITED {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

impl fmt::Display for Rlimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.soft == self.hard {
            f.write_str(&word(self.soft))
        } else {
            write!(f, "{}:{}", word(self.soft), word(self.hard))
        }
    }
}

/// `[daemon] rlimit_nofile`: the parent's own descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentNofile {
    /// Raise the soft limit to the hard one (the default).
    Hard,
    /// Leave it as the daemon was started with.
    Keep,
    /// Set exactly this.
    Set(Rlimit),
}

impl ParentNofile {
    /// As a TOML value.
    pub fn toml(&self) -> String {
        match self {
            ParentNofile::Hard => "\"hard\"".into(),
            ParentNofile::Keep => "\"keep\"".into(),
            ParentNofile::Set(r) => r.toml(),
        }
    }
}

/// Sets the parent's descriptor limit as `[daemon] rlimit_nofile` says,
/// once at startup, before any worker is started (they inherit it). With
/// `"hard"` a failure is ignored (the daemon runs with what it has, as it
/// always did); with a number it is an error, with the limit asked for.
pub fn apply_parent(d: &DaemonConfig) -> Result<(), (Rlimit, nix::Error)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match d.rlimit_nofile {
        ParentNofile::Keep => Ok(()),
        ParentNofile::Hard => {
            if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
                if soft < hard {
                    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
                }
            }
            Ok(())
        }
        ParentNofile::Set(r) => setrlimit(Resource::RLIMIT_NOFILE, r.soft, r.hard).map_err(|e| (r, e)),
    }
}

/// The workers' limits, prepared for [`Prepared::apply`] in the worker.
pub(crate) fn for_workers(w: &WorkersConfig) -> Prepared {
    let v = |r: Option<Rlimit>| r.map(|r| (r.soft, r.hard));
    Prepared::new(
        [
            (Resource::Nofile, v(w.rlimit_nofile)),
            (Resource::Core, v(w.rlimit_core)),
            (Resource::As, v(w.rlimit_as)),
            (Resource::Nproc, v(w.rlimit_nproc)),
        ],
        w.nice,
        w.oom_score_adj,
    )
}

/// The error a worker reports when a step failed.
pub(crate) fn failure(step: crate::sys::limits::Step, errno: i32) -> String {
    format!(
        "cannot apply {}: {}",
        step.key(),
        std::io::Error::from_raw_os_error(errno)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_one_value_or_soft_colon_hard() {
        let r = |s, h| Ok(Rlimit { soft: s, hard: h });
        assert_eq!(Rlimit::parse("4096", false), r(4096, 4096));
        assert_eq!(Rlimit::parse("unlimited", false), r(UNLIMITED, UNLIMITED));
        assert_eq!(Rlimit::parse("Infinity", false), r(UNLIMITED, UNLIMITED));
        assert_eq!(Rlimit::parse("1024:4096", false), r(1024, 4096));
        assert_eq!(Rlimit::parse("0:unlimited", false), r(0, UNLIMITED));
        assert_eq!(Rlimit::parse("512MiB", true), r(512 << 20, 512 << 20));
        assert_eq!(Rlimit::parse("1G:2G", true), r(1_000_000_000, 2_000_000_000));
        assert!(Rlimit::parse("512MiB", false)
            .unwrap_err()
            .contains("a number or \"unlimited\""));
        assert!(Rlimit::parse("lots", true).unwrap_err().contains("512MiB"));
        assert!(Rlimit::parse("10:5", false)
            .unwrap_err()
            .contains("above the hard limit"));
        assert!(Rlimit::parse("-1", false).is_err());
        assert_eq!(Rlimit::from_int(7), r(7, 7));
        assert!(Rlimit::from_int(-7).unwrap_err().contains("negative"));
    }

    #[test]
    fn limits_print_for_systemd_toml_and_people() {
        let both = Rlimit { soft: 10, hard: 10 };
        let split = Rlimit {
            soft: 10,
            hard: UNLIMITED,
        };
        assert_eq!(both.systemd(), "10");
        assert_eq!(split.systemd(), "10:infinity");
        assert_eq!(both.toml(), "10");
        assert_eq!(split.toml(), "\"10:unlimited\"");
        assert_eq!(Rlimit::parse(&split.to_string(), false), Ok(split));
        assert_eq!(ParentNofile::Keep.toml(), "\"keep\"");
    }
}
