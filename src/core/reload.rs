//! What a reload changes: the explicit list of keys and what each needs.
//!
//! Every key falls in one of three groups, and the compiler keeps the list
//! complete (each config struct is destructured field by field, so a new
//! key does not build until it is placed):
//! * applied in place by the parent (back-off, health checks, pool size...);
//! * read by a worker when it starts (stop signal, delays, the command, the
//!   `[app]` settings...): workers are replaced one at a time;
//! * fixed for the daemon's life (paths, accounts): need a restart.

use crate::config::{Config, DaemonConfig, MetricsConfig, WorkersConfig};

/// The reload's consequences.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    /// The new static size, when it changed (`old`, `new`).
    pub resize: Option<(u32, u32)>,
    /// Changed keys that workers read when they start.
    pub replace: Vec<&'static str>,
    /// Changed keys the parent applies at once.
    pub live: Vec<&'static str>,
    /// Changed keys that only a restart applies.
    pub restart: Vec<&'static str>,
}

impl Plan {
    /// Whether running workers must be replaced.
    pub(crate) fn replaces_workers(&self) -> bool {
        !self.replace.is_empty()
    }
}

/// Compares the running configuration with the new one.
pub(crate) fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = Plan::default();
    let WorkersConfig {
        count,
        restart,
        backoff_initial,
        backoff_max,
        min_uptime,
        stop_signal,
        stop_timeout,
        iteration_delay,
        idle_delay,
        title_interval,
        heartbeat_timeout,
        max_jobs,
        max_memory,
        max_lifetime,
        check_interval,
        crash_limit,
        crash_window,
        on_crash_loop,
        mode,
        min,
        max,
        min_idle,
        max_idle,
        idle_timeout,
        command,
        ready,
        ready_timeout,
        init_timeout,
        reopen_signal,
        pause_signal,
        resume_signal,
        nice,
        rlimit_nofile,
        rlimit_core,
        rlimit_as,
        rlimit_nproc,
        oom_score_adj,
        env,
        env_file,
        job_timeout,
        upgrade_drain_timeout,
        slow_job,
        on_hang,
        on_hang_timeout,
        jobs_per_worker,
        scale_up_step,
        scale_down_cooldown,
    } = &old.workers;
    let n = &new.workers;
    macro_rules! cmp {
        ($list:ident, $($key:ident),+) => {
            $(if *$key != n.$key {
                p.$list.push(concat!("workers.", stringify!($key)));
            })+
        };
    }
    // Read by the worker process itself when it starts.
    cmp!(
        replace,
        stop_signal,
        stop_timeout,
        iteration_delay,
        idle_delay,
        title_interval,
        max_jobs,
        command,
        // issue 13: set in each worker as it starts.
        nice,
        rlimit_nofile,
        rlimit_core,
        rlimit_as,
        rlimit_nproc,
        oom_score_adj,
        env,
        env_file
    );
    // Enforced by the parent.
    cmp!(
        live,
        restart,
        backoff_initial,
        backoff_max,
        min_uptime,
        heartbeat_timeout,
        max_memory,
        max_lifetime,
        check_interval,
        crash_limit,
        crash_window,
        on_crash_loop,
        mode,
        min,
        max,
        min_idle,
        max_idle,
        idle_timeout,
        ready,
        ready_timeout,
        init_timeout,
        reopen_signal,
        // issue 11: sent by the parent on the next pause / resume.
        pause_signal,
        resume_signal,
        job_timeout,
        upgrade_drain_timeout,
        slow_job,
        on_hang,
        on_hang_timeout,
        jobs_per_worker,
        scale_up_step,
        scale_down_cooldown
    );
    if count != &n.count {
        if n.mode == crate::config::Mode::Static {
            p.resize = Some((*count, n.count));
        }
        p.live.push("workers.count");
    }
    if old.app != new.app {
        p.replace.push("app");
    }
    let DaemonConfig {
        name,
        pidfile,
        logfile,
        loglevel,
        log_format,
        user,
        group,
        umask,
        workdir,
        control_socket,
        watchdog,
        on_event,
        on_event_timeout,
        rlimit_nofile: parent_nofile,
    } = &old.daemon;
    let d = &new.daemon;
    macro_rules! dcmp {
        ($list:ident, $($key:ident),+) => {
            $(if *$key != d.$key {
                p.$list.push(concat!("daemon.", stringify!($key)));
            })+
        };
    }
    // A worker's log level is set when it starts.
    dcmp!(replace, loglevel);
    // issue 12: read by the parent each time it runs one.
    dcmp!(live, on_event, on_event_timeout);
    // issue 10: the parent's lines change at once; a worker's format is
    // set when it starts.
    dcmp!(replace, log_format);
    dcmp!(
        restart,
        name,
        pidfile,
        logfile,
        user,
        group,
        umask,
        workdir,
        control_socket,
        watchdog
    );
    // Set once, when the daemon starts.
    if *parent_nofile != d.rlimit_nofile {
        p.restart.push("daemon.rlimit_nofile");
    }
    // issue 12: the listener is bound once; readiness reads min_ready live.
    let MetricsConfig { listen, min_ready } = &old.metrics;
    if *listen != new.metrics.listen {
        p.restart.push("metrics.listen");
    }
    if *min_ready != new.metrics.min_ready {
        p.live.push("metrics.min_ready");
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_change_lands_in_its_group() {
        let old = Config::defaults("t");
        assert_eq!(plan(&old, &old), Plan::default(), "no change, nothing to do");

        let mut new = old.clone();
        new.workers.count = 7;
        new.workers.heartbeat_timeout = Duration::from_secs(9);
        let p = plan(&old, &new);
        assert_eq!(p.resize, Some((4, 7)));
        assert_eq!(p.live, ["workers.heartbeat_timeout", "workers.count"]);
        assert!(!p.replaces_workers(), "a resize alone replaces nobody");

        let mut new = old.clone();
        new.workers.stop_timeout = Duration::from_secs(3);
        new.app.insert("rate".into(), toml::Value::Integer(5));
        new.daemon.user = Some("nobody".into());
        new.metrics.listen = Some(crate::config::MetricsListen::Tcp("127.0.0.1:1".parse().unwrap()));
        new.metrics.min_ready = Some(1);
        let p = plan(&old, &new);
        assert_eq!(p.replace, ["workers.stop_timeout", "app"]);
        assert_eq!(p.restart, ["daemon.user", "metrics.listen"]);
        assert_eq!(p.live, ["metrics.min_ready"]);
        assert!(p.replaces_workers());

        // issue 13: limits are set as a worker starts.
        let mut new = old.clone();
        new.workers.nice = Some(5);
        new.workers.rlimit_core = Some(crate::limits::Rlimit { soft: 0, hard: 0 });
        new.daemon.rlimit_nofile = crate::limits::ParentNofile::Keep;
        let p = plan(&old, &new);
        assert_eq!(p.replace, ["workers.nice", "workers.rlimit_core"]);
        assert_eq!(p.restart, ["daemon.rlimit_nofile"]);

        // issue 13: the workers' environment, from env or from the env
        // file's contents, is read when a worker starts.
        let mut new = old.clone();
        new.workers.env.insert("LANG".into(), "C".into());
        new.workers.env_file = Some(crate::config::EnvFile {
            path: "/etc/x.env".into(),
            vars: [("A".to_string(), "1".to_string())].into(),
        });
        assert_eq!(plan(&old, &new).replace, ["workers.env", "workers.env_file"]);

        let mut new = old.clone();
        new.workers.mode = crate::config::Mode::Dynamic;
        new.workers.count = 2;
        assert_eq!(plan(&old, &new).resize, None, "dynamic mode sizes itself");
    }
}
