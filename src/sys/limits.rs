//! Applying the workers' limits in a new worker process (issue 13): raw
//! calls on plain integers prepared before the fork or clone, so that the
//! child of [`super::exec::spawn`] and the `pre_exec` hook of
//! [`super::child_setup`] (where only async-signal-safe calls are allowed
//! and nothing may allocate) can use them as a forked Rust worker does.

use std::os::raw::c_int;

/// A resource limit rookery sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `RLIMIT_NOFILE`.
    Nofile,
    /// `RLIMIT_CORE`.
    Core,
    /// `RLIMIT_AS`.
    As,
    /// `RLIMIT_NPROC`.
    Nproc,
}

impl Resource {
    fn raw(self) -> libc::__rlimit_resource_t {
        match self {
            Resource::Nofile => libc::RLIMIT_NOFILE,
            Resource::Core => libc::RLIMIT_CORE,
            Resource::As => libc::RLIMIT_AS,
            Resource::Nproc => libc::RLIMIT_NPROC,
        }
    }

    /// The config key that sets it.
    pub fn key(self) -> &'static str {
        match self {
            Resource::Nofile => "workers.rlimit_nofile",
            Resource::Core => "workers.rlimit_core",
            Resource::As => "workers.rlimit_as",
            Resource::Nproc => "workers.rlimit_nproc",
        }
    }
}

/// What failed, as a small number the child of a clone can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Writing `/proc/self/oom_score_adj`.
    OomScoreAdj,
    /// `setpriority`.
    Nice,
    /// `setrlimit` of this resource.
    Rlimit(Resource),
}

impl Step {
    const ALL: [Step; 6] = [
        Step::OomScoreAdj,
        Step::Nice,
        Step::Rlimit(Resource::Nofile),
        Step::Rlimit(Resource::Core),
        Step::Rlimit(Resource::As),
        Step::Rlimit(Resource::Nproc),
    ];

    /// Its number (0..6), for a report pipe.
    pub fn index(self) -> u32 {
        Step::ALL.iter().position(|s| *s == self).unwrap_or(0) as u32
    }

    /// The step numbered `i`.
    pub fn from_index(i: u32) -> Option<Step> {
        Step::ALL.get(i as usize).copied()
    }

    /// The config key behind it.
    pub fn key(self) -> &'static str {
        match self {
            Step::OomScoreAdj => "workers.oom_score_adj",
            Step::Nice => "workers.nice",
            Step::Rlimit(r) => r.key(),
        }
    }
}

/// `oom_score_adj` as the decimal text the kernel reads (at most
/// "-1000\n"), formatted before the fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OomText {
    buf: [u8; 8],
    len: usize,
}

/// The limits to set in a worker, as plain integers: `Copy`, so a
/// `pre_exec` hook can own a copy, and applied without allocating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prepared {
    rlimits: [Option<(Resource, u64, u64)>; 4],
    nice: Option<i32>,
    oom: Option<OomText>,
}

impl Prepared {
    /// Prepares `rlimits` (resource, soft, hard; `u64::MAX` is unlimited),
    /// `nice` and `oom_score_adj`.
    pub fn new(
        rlimits: [(Resource, Option<(u64, u64)>); 4],
        nice: Option<i32>,
        oom: Option<i32>,
    ) -> Prepared {
        let oom = oom.map(|v| {
            let text = format!("{v}\n");
            let mut buf = [0u8; 8];
            let len = text.len().min(buf.len());
            buf[..len].copy_from_slice(&text.as_bytes()[..len]);
            OomText { buf, len }
        });
        Prepared {
            rlimits: rlimits.map(|(r, v)| v.map(|(s, h)| (r, s, h))),
            nice,
            oom,
        }
    }

    /// Applies everything, in this order: the OOM score, the nice value,
    /// then each limit. Only `open`, `write`, `close`, `setpriority` and
    /// `setrlimit` on values owned by `self`: async-signal-safe, no
    /// allocation. Run it while the process still has the parent's
    /// privileges (a lower OOM score, a lower nice value and a higher hard
    /// limit all need them). The error is the step and its errno.
    pub fn apply(&self) -> Result<(), (Step, c_int)> {
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if let Some(o) = &self.oom {
            // SAFETY: open(2) of a static NUL-terminated path, write(2) of a
            // buffer owned by `self`, close(2) of the descriptor just opened.
            unsafe {
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd < 0 {
                    return Err((Step::OomScoreAdj, errno()));
                }
                let n = libc::write(fd, o.buf.as_ptr().cast(), o.len);
                let e = errno();
                libc::close(fd);
                if n != o.len as isize {
                    return Err((Step::OomScoreAdj, if n < 0 { e } else { libc::EIO }));
                }
            }
        }
        if let Some(n) = self.nice {
            // SAFETY: setpriority(2) on integers; 0 is this process.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } != 0 {
                return Err((Step::Nice, errno()));
            }
        }
        for (r, soft, hard) in self.rlimits.iter().flatten() {
            let lim = libc::rlimit {
                rlim_cur: *soft as libc::rlim_t,
                rlim_max: *hard as libc::rlim_t,
            };
            // SAFETY: setrlimit(2) with a pointer to a local struct.
            if unsafe { libc::setrlimit(r.raw(), &lim) } != 0 {
                return Err((Step::Rlimit(*r), errno()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_their_numbers() {
        for s in Step::ALL {
            assert_eq!(Step::from_index(s.index()), Some(s));
        }
        assert_eq!(Step::from_index(6), None);
        assert_eq!(Step::Rlimit(Resource::Core).key(), "workers.rlimit_core");
    }

    #[test]
    fn the_oom_score_is_prepared_as_the_kernel_reads_it() {
        let p = Prepared::new(
            [
                (Resource::Nofile, Some((10, 20))),
                (Resource::Core, None),
                (Resource::As, None),
                (Resource::Nproc, None),
            ],
            Some(5),
            Some(-1000),
        );
        let o = p.oom.unwrap();
        assert_eq!(&o.buf[..o.len], b"-1000\n");
        assert_eq!(p.rlimits[0], Some((Resource::Nofile, 10, 20)));
        assert_eq!(p.rlimits[1], None);
        assert_eq!(Prepared::default().apply(), Ok(()), "nothing set, nothing done");
    }
}
