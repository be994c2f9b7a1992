//! issue 11: `upgrade`, on real processes.
//!
//! Each test runs its own copy of the test worker (or `rookery`) from its
//! own directory, so replacing "the binary on disk" never touches the
//! shared target directory. A *new build* is a copy whose compiled-in
//! build id (the bytes after `TESTBUILD:`, see examples/testworker.rs) is
//! rewritten: a different executable file, whose workers report a
//! different build id, put in place by a rename as a deploy does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::util::*;

const MARK: &[u8] = b"TESTBUILD:aaaaaaaaaaaaaa";

pub(crate) fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Puts at `path` (by a rename, as a deploy does) a build of the test
/// worker whose build id is `id` (at most 14 bytes).
fn install_build(path: &Path, id: &str) {
    install_build_of("testworker", path, id);
}

/// The same for the example `name` (it carries the same marker).
pub(crate) fn install_build_of(name: &str, path: &Path, id: &str) {
    assert!(id.len() <= 14);
    let mut bytes = fs::read(example(name)).expect("read the example");
    let at = bytes
        .windows(MARK.len())
        .position(|w| w == MARK)
        .expect("the build id marker is in the binary");
    let mut mark = format!("TESTBUILD:{id}").into_bytes();
    mark.resize(MARK.len(), b'.');
    bytes[at..at + MARK.len()].copy_from_slice(&mark);
    let tmp = path.with_extension("new");
    fs::write(&tmp, &bytes).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// A test worker daemon running from its own copy of the binary (build
/// `aaaaaaaaaaaaaa`).
fn testworker(extra: &str) -> Daemon {
    let mut d = Daemon::with(example("testworker"), "testworker", extra);
    let exe = d.dir.path().join("testworker");
    install_build(&exe, "aaaaaaaaaaaaaa");
    d.exe = exe;
    d
}

/// What the tests read of `status --json`.
#[derive(Debug, Deserialize)]
pub(crate) struct Status {
    pid: i32,
    version: String,
    pub(crate) workers: Vec<WorkerStatus>,
    totals: Totals,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WorkerStatus {
    pub(crate) state: String,
    activity: String,
    version: String,
    previous: bool,
}

#[derive(Debug, Deserialize)]
struct Totals {
    started: BTreeMap<String, u64>,
}

/// `status --json`, if the daemon answered.
fn status(d: &Daemon) -> Option<Status> {
    status_of(&d.exe, &d.config)
}

pub(crate) fn status_of(exe: &Path, config: &Path) -> Option<Status> {
    let mut c = std::process::Command::new(exe);
    c.arg("-c").arg(config).args(["status", "--json"]);
    let out = run_with_timeout(&mut c, Duration::from_secs(30));
    serde_json::from_slice(&out.stdout).ok()
}

fn version_of(v: &str) -> String {
    format!("0.1.0+{v}")
}

/// `/proc/PID/exe` as the kernel names it (`PATH (deleted)` for a file
/// that was replaced).
pub(crate) fn exe_of(pid: i32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Samples the number of ready workers (running, as `status` says) from
/// another thread until stopped; returns the smallest seen and the count.
pub(crate) struct Poller {
    stop: Arc<AtomicBool>,
    min: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    pub(crate) fn start(exe: PathBuf, config: PathBuf) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let min = Arc::new(AtomicUsize::new(usize::MAX));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, m, n) = (stop.clone(), min.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(st) = status_of(&exe, &config) {
                    let ready = st.workers.iter().filter(|w| w.state == "running").count();
                    m.fetch_min(ready, Ordering::SeqCst);
                    n.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Poller {
            stop,
            min,
            samples,
            thread: Some(thread),
        }
    }

    pub(crate) fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.min.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

#[test]
fn upgrade_runs_the_new_binary_in_place_and_never_drops_below_n_ready() {
    let hook = TempDir::new("upgrade-hook");
    let hook_file = hook.path().join("kept");
    fs::write(&hook_file, "x").unwrap();
    let d = testworker(&format!(
        "[workers]\ncount = 4\nstop_timeout = \"5s\"\n[app]\njob_interval = \"20ms\"\nbusy_ms = 30\nlog_jobs = true\nhook_file = \"{}\"\n",
        hook_file.display()
    ));
    let parent = d.start();
    let old = d.wait_workers(parent, 4);
    assert!(d.wait_log("job 2 done by build aaaaaaaaaaaaaa"), "{}", d.log());
    let holds_hook = || {
        fs::read_dir(format!("/proc/{parent}/fd"))
            .unwrap()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .any(|p| p == hook_file)
    };
    assert!(holds_hook(), "on_start opened the hook file");

    install_build(&d.exe, "bbbbbbbbbbbbbb");
    // The poller runs its own copy: the file at d.exe is replaced under it.
    let ctl = d.dir.path().join("ctl");
    fs::copy(example("testworker"), &ctl).unwrap();
    let poller = Poller::start(ctl, d.config.clone());
    let out = d.run(&["upgrade"]);
    let (min, samples) = poller.finish();
    assert_eq!(out.status.code(), Some(0), "{}\n{}", show(&out), d.log());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("upgraded: 4 workers"),
        "{}",
        show(&out)
    );
    assert!(samples >= 3, "the poller got {samples} samples");
    assert!(
        min >= 4,
        "only {min} ready workers were seen during the upgrade\n{}",
        d.log()
    );

    // Same parent, same pidfile; every worker is new and runs the new file.
    assert_eq!(d.pid(), Some(parent));
    assert!(alive(parent));
    let new = d.wait_workers(parent, 4);
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} -> {new:?}");
    let path = d.exe.display().to_string();
    assert_eq!(exe_of(parent), path, "the parent runs the new file");
    for w in &new {
        assert_eq!(exe_of(*w), path, "worker {w} runs the new file");
    }
    for w in &old {
        assert!(wait_until(DEADLINE, || !alive(*w)), "old worker {w} is gone");
    }
    let s = status(&d).expect("status");
    assert_eq!(s.pid, parent);
    assert_eq!(s.version, version_of("bbbbbbbbbbbbbb"));
    assert!(
        s.workers
            .iter()
            .all(|w| w.version == version_of("bbbbbbbbbbbbbb") && !w.previous),
        "{s:?}"
    );
    assert_eq!(s.totals.started.get("upgrade"), Some(&4), "{s:?}");
    assert!(d.wait_log("job 2 done by build bbbbbbbbbbbbbb"), "{}", d.log());
    assert!(holds_hook(), "the descriptor on_start opened survived the exec");
    let log = d.log();
    assert!(
        log.contains("testworker 0.1.0+bbbbbbbbbbbbbb starting in place"),
        "{log}"
    );

    // SIGUSR2 does the same (it used to kill the parent).
    install_build(&d.exe, "cccccccccccccc");
    kill(parent, 12);
    assert!(
        wait_until(DEADLINE, || status(&d).is_some_and(|s| s.version
            == version_of("cccccccccccccc")
            && s.workers.len() == 4
            && s.workers
                .iter()
                .all(|w| w.version == version_of("cccccccccccccc")))),
        "{}",
        d.log()
    );
    assert_eq!(d.pid(), Some(parent));
    let out = d.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(!alive(parent));
}

#[test]
fn a_failed_upgrade_changes_nothing_and_a_later_good_one_works() {
    let d = testworker(
        "[workers]\ncount = 3\nstop_timeout = \"5s\"\ninit_timeout = \"10s\"\n[app]\njob_interval = \"20ms\"\nlog_jobs = true\n",
    );
    let parent = d.start();
    let old = d.wait_workers(parent, 3);
    // The operator's commands run from a copy that stays a good binary.
    let ctl = d.dir.path().join("ctl");
    fs::copy(&d.exe, &ctl).unwrap();
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(&ctl);
        c.arg("-c").arg(&d.config).args(args).current_dir(d.dir.path());
        run_with_timeout(&mut c, Duration::from_secs(120))
    };
    let same = |why: &str| {
        assert_eq!(d.pid(), Some(parent), "{why}");
        assert_eq!(
            d.workers(parent),
            old,
            "{why}: the old workers keep serving\n{}",
            d.log()
        );
        let out = run(&["status"]);
        assert_eq!(out.status.code(), Some(0), "{why}: healthy\n{}", show(&out));
    };

    // A missing binary.
    let aside = d.dir.path().join("aside");
    fs::rename(&d.exe, &aside).unwrap();
    let out = run(&["upgrade"]);
    assert_eq!(out.status.code(), Some(66), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        show(&out)
    );
    fs::rename(&aside, &d.exe).unwrap();
    same("missing binary");

    // A binary that exits at once (not a rookery daemon).
    let good = fs::read(&d.exe).unwrap();
    let tmp = d.dir.path().join("script");
    fs::write(&tmp, "#!/bin/sh\nexit 1\n").unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, &d.exe).unwrap();
    let out = run(&["upgrade"]);
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not answer"),
        "{}",
        show(&out)
    );
    assert!(d.log().contains("upgrade refused"), "{}", d.log());
    same("a binary that exits at once");

    // A binary that is not executable.
    fs::write(&tmp, &good).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    fs::rename(&tmp, &d.exe).unwrap();
    let out = run(&["upgrade"]);
    assert_eq!(out.status.code(), Some(77), "{}", show(&out));
    same("a binary that is not executable");

    // An invalid config.
    install_build(&d.exe, "bbbbbbbbbbbbbb");
    let text = fs::read_to_string(&d.config).unwrap();
    fs::write(&d.config, format!("{text}\n[workers]\ncount = \"many\"\n")).unwrap();
    let out = run(&["upgrade"]);
    assert_eq!(out.status.code(), Some(78), "{}", show(&out));
    fs::write(&d.config, &text).unwrap();
    same("an invalid config");

    // A build whose workers fail init: rolled back, the old workers never
    // stopped, the parent back on the old binary.
    install_build(&d.exe, "failinit");
    let out = run(&["upgrade"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", show(&out), d.log());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rolled back") && err.contains("cannot start its workers"),
        "{}",
        show(&out)
    );
    same("a build whose workers fail init");
    let s = status(&d).unwrap();
    assert_eq!(
        s.version,
        version_of("aaaaaaaaaaaaaa"),
        "the parent runs the old binary again"
    );
    assert!(exe_of(parent).ends_with("(deleted)"), "{}", exe_of(parent));
    let jobs = d.log().matches("done by build aaaaaaaaaaaaaa").count();
    assert!(
        d.wait_log_count("done by build aaaaaaaaaaaaaa", jobs + 3),
        "the old workers go on working"
    );

    // A later good upgrade works.
    install_build(&d.exe, "bbbbbbbbbbbbbb");
    let out = run(&["upgrade"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", show(&out), d.log());
    let new = d.wait_workers(parent, 3);
    assert!(new.iter().all(|p| !old.contains(p)));
    assert!(new.iter().all(|p| exe_of(*p) == d.exe.display().to_string()));
    assert_eq!(status(&d).unwrap().version, version_of("bbbbbbbbbbbbbb"));
}

#[test]
fn a_long_job_finishes_on_the_old_binary_while_new_workers_take_jobs() {
    let d = testworker(
        "[workers]\ncount = 2\nstop_timeout = \"2s\"\nupgrade_drain_timeout = \"40s\"\n[app]\njob_interval = \"10ms\"\nbusy_ms = 12000\nfinish_job = true\nlog_jobs = true\n",
    );
    let parent = d.start();
    let old = d.wait_workers(parent, 2);
    assert!(
        wait_until(DEADLINE, || status(&d)
            .is_some_and(|s| s.workers.iter().all(|w| w.activity == "busy"))),
        "both old workers are in a long job"
    );
    install_build(&d.exe, "bbbbbbbbbbbbbb");
    let mut upgrade = d.cmd(&["upgrade"]);
    let child = upgrade
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the old workers still finish their jobs, the new ones work.
    assert!(
        wait_until(DEADLINE, || status(&d).is_some_and(|s| {
            let old_stopping = s
                .workers
                .iter()
                .filter(|w| w.previous && w.state == "stopping")
                .count();
            let new_busy = s
                .workers
                .iter()
                .filter(|w| !w.previous && w.activity == "busy")
                .count();
            old_stopping == 2 && new_busy == 2
        })),
        "new workers busy beside old ones finishing\n{}",
        d.log()
    );
    assert!(
        old.iter().all(|p| alive(*p)),
        "the old workers are not killed (stop_timeout is 2 s)"
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{}", show(&out), d.log());
    let log = d.log();
    assert_eq!(
        log.matches("job 1 done by build aaaaaaaaaaaaaa").count(),
        2,
        "{log}"
    );
    for p in &old {
        assert!(
            log.contains(&format!("(pid {p}) exited after stop request: exit status 0")),
            "{p} finished its job and exited by itself:\n{log}"
        );
    }
    assert!(!log.contains("sending SIGKILL"), "{log}");
}

#[test]
fn upgrading_a_command_pool_picks_up_a_changed_script() {
    let dir = TempDir::new("upgrade-script");
    let script = dir.path().join("w.sh");
    fs::write(&script, "echo script v1; exec sleep 600\n").unwrap();
    let d = Daemon::rookery(&format!(
        "[workers]\ncount = 2\nstop_timeout = \"3s\"\nmin_uptime = \"300ms\"\ncommand = [\"sh\", \"{}\"]\n",
        script.display()
    ));
    let parent = d.start();
    let two = || {
        let mut v = Vec::new();
        assert!(wait_until(DEADLINE, || {
            v = d.workers(parent);
            v.len() == 2
        }));
        v
    };
    let old = two();
    let guard = guard_of(parent).expect("a guard for commands");
    assert!(d.wait_log_count("script v1", 2), "{}", d.log());
    fs::write(&script, "echo script v2; exec sleep 600\n").unwrap();
    let out = d.run(&["upgrade"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", show(&out), d.log());
    assert!(d.wait_log_count("script v2", 2), "{}", d.log());
    assert_eq!(d.pid(), Some(parent));
    for p in &old {
        assert!(wait_until(DEADLINE, || !alive(*p)), "old command {p} stopped");
    }
    let new = two();
    assert!(new.iter().all(|p| !old.contains(p)));
    assert_eq!(
        guard_of(parent),
        Some(guard),
        "the guard was handed over, not restarted"
    );
    // The guard still guards the new commands: SIGKILL of the parent
    // stops them.
    kill(parent, 9);
    for p in &new {
        assert!(
            wait_until(DEADLINE, || !alive(*p)),
            "command {p} outlived the parent"
        );
    }
}

#[test]
fn a_racing_start_is_refused_and_a_killed_parent_leaves_no_worker() {
    let d = testworker(
        "[workers]\ncount = 2\nstop_timeout = \"2s\"\nupgrade_drain_timeout = \"40s\"\n[app]\njob_interval = \"10ms\"\nbusy_ms = 30000\nfinish_job = true\n",
    );
    let parent = d.start();
    let old = d.wait_workers(parent, 2);
    install_build(&d.exe, "bbbbbbbbbbbbbb");
    let child = d
        .cmd(&["upgrade"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Starts race with the upgrade from its first moment, the exec included.
    let mut refused = 0;
    let in_progress = || {
        status(&d)
            .is_some_and(|s| s.workers.iter().any(|w| !w.previous) && s.workers.iter().any(|w| w.previous))
    };
    while !in_progress() {
        let out = d.run(&["start"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("already running")
                || String::from_utf8_lossy(&out.stderr).contains("already running"),
            "{}",
            show(&out)
        );
        refused += 1;
        assert!(refused < 200, "the upgrade never began\n{}", d.log());
    }
    let out = d.run(&["start"]);
    assert!(show(&out).contains("already running"), "{}", show(&out));
    assert_eq!(d.pid(), Some(parent));
    let all = d.workers(parent);
    assert!(all.len() >= 3, "old and new workers: {all:?}");
    assert!(old.iter().all(|p| all.contains(p)));
    // SIGKILL of the parent in the middle: old and new workers go.
    kill(parent, 9);
    for p in &all {
        assert!(
            wait_until(DEADLINE, || !alive(*p)),
            "worker {p} outlived the parent\n{}",
            d.log()
        );
    }
    // The waiting `upgrade` sees the daemon gone and says so.
    let t = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        t.elapsed() < DEADLINE,
        "upgrade waited {:?} for a dead daemon",
        t.elapsed()
    );
}

/// The Beanstalkd chaos (a worker SIGKILLed every 50 ms) with two upgrades
/// to rebuilt binaries in the middle: every job has a result, a poller
/// never sees fewer than N ready workers while an upgrade runs (the kills
/// pause for the upgrade: a killed worker is down until its restart, which
/// no upgrade can prevent), the parent's pid stays, every worker runs the
/// last file afterwards, and the results name all three builds.
#[test]
fn beanstalk_chaos_with_two_upgrades_loses_no_job() {
    use crate::queues::{
        beanstalk_config, check_exactly_once_but_for, done_ids, put_jobs, read_results, tube_counts,
    };
    const JOBS: u64 = 30_000;
    let server = crate::servers::Beanstalkd::start();
    let addr = server.addr();
    put_jobs(&server, "chaos", JOBS, 0, "ok", "2s");
    let mut d = Daemon::with(example("beanstalk_worker"), "beanstalk_worker", "");
    let exe = d.dir.path().join("beanstalk_worker");
    install_build_of("beanstalk_worker", &exe, "aaaaaaaaaaaaaa");
    d.exe = exe;
    let results = d.dir.path().join("results");
    d.rewrite_config(&beanstalk_config(
        &server,
        "chaos",
        &results,
        8,
        "reserve_timeout = \"1s\"\njob_time = \"3ms\"",
    ));
    let ctl = d.dir.path().join("ctl");
    fs::copy(example("beanstalk_worker"), &ctl).unwrap();
    let parent = d.start();
    d.wait_workers(parent, 8);
    let remaining = || {
        let [ready, _, delayed, _] = tube_counts(&addr, "chaos");
        ready + delayed
    };
    let UpgradeChaos { killed, least, .. } =
        chaos_with_two_upgrades(&d, parent, &ctl, "beanstalk_worker", remaining);
    let finished = wait_until(Duration::from_secs(120), || {
        tube_counts(&addr, "chaos") == [0; 4] && done_ids(&read_results(&[&results])).len() as u64 == JOBS
    });
    assert!(finished, "not finished: {:?}", tube_counts(&addr, "chaos"));
    assert!(least >= 8, "{least} ready workers seen during an upgrade");
    assert_eq!(d.pid(), Some(parent));
    let workers = d.wait_workers(parent, 8);
    let path = d.exe.display().to_string();
    for w in &workers {
        assert_eq!(exe_of(*w), path, "worker {w} runs the last file");
    }
    let records = read_results(&[&results]);
    let dups = check_exactly_once_but_for(&records, JOBS, &killed);
    let builds = jobs_by_build(&results);
    eprintln!(
        "upgrade chaos: {JOBS} jobs, {} kills, {dups} duplicates, builds {builds:?}",
        killed.len()
    );
    assert!(d.run(&["stop"]).status.success());
}

/// What [`chaos_with_two_upgrades`] did.
pub(crate) struct UpgradeChaos {
    /// Every worker SIGKILLed.
    pub killed: std::collections::HashSet<i32>,
    /// The fewest ready workers a poller saw during an upgrade.
    pub least: usize,
    /// `remaining()` just before each upgrade.
    pub left: Vec<u64>,
}

/// The chaos of the upgrade chaos tests (Beanstalkd, RabbitMQ): a second
/// of SIGKILLs (a random worker of `parent` every 50 ms), then, twice, an
/// upgrade of `d.exe` to a copy of `example` with build `bbbb…` then
/// `cccc…` issued from `ctl` once all 8 slots are running again, and a last
/// second of kills. Asserts that each upgrade succeeds, that work remained
/// before it (`remaining()`), and that a poller saw at least one sample.
pub(crate) fn chaos_with_two_upgrades(
    d: &Daemon,
    parent: i32,
    ctl: &Path,
    example: &str,
    remaining: impl Fn() -> u64,
) -> UpgradeChaos {
    let mut killed = std::collections::HashSet::new();
    let mut seed = u64::from(std::process::id());
    let mut chaos = |killed: &mut std::collections::HashSet<i32>| {
        let end = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < end {
            assert!(alive(parent), "the parent died\n{}", d.log());
            let w = d.workers(parent);
            if !w.is_empty() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let victim = w[((seed >> 33) % w.len() as u64) as usize];
                kill(victim, 9);
                killed.insert(victim);
            }
            std::thread::sleep(Duration::from_millis(50)); // pacing of the kills
        }
    };
    let (mut least, mut left) = (usize::MAX, Vec::new());
    for build in ["bbbbbbbbbbbbbb", "cccccccccccccc"] {
        chaos(&mut killed);
        // Every slot filled and ready again before the upgrade begins.
        assert!(
            wait_until(DEADLINE, || status_of(ctl, &d.config).is_some_and(|s| s
                .workers
                .iter()
                .filter(|w| w.state == "running")
                .count()
                >= 8)),
            "{}",
            d.log()
        );
        install_build_of(example, &d.exe, build);
        let poller = Poller::start(ctl.to_path_buf(), d.config.clone());
        let mut c = std::process::Command::new(ctl);
        c.arg("-c").arg(&d.config).arg("upgrade");
        let out = run_with_timeout(&mut c, Duration::from_secs(120));
        let (min, samples) = poller.finish();
        assert_eq!(out.status.code(), Some(0), "{}\n{}", show(&out), d.log());
        assert!(samples >= 1, "no sample during the upgrade");
        least = least.min(min);
        let now = remaining();
        assert!(now > 0, "the work ran out before the upgrade to {build}");
        left.push(now);
    }
    chaos(&mut killed);
    UpgradeChaos { killed, least, left }
}

/// Jobs done by each build: the fourth field of the results' lines (the
/// queue examples write their build id there). Asserts that each of the
/// three builds of the upgrade chaos tests did some.
pub(crate) fn jobs_by_build(results: &Path) -> BTreeMap<String, u64> {
    let mut builds = BTreeMap::new();
    for e in fs::read_dir(results).unwrap() {
        let text = fs::read_to_string(e.unwrap().path()).unwrap();
        for line in text.lines() {
            let b = line.split('\t').nth(3).unwrap_or("none").to_string();
            *builds.entry(b).or_insert(0u64) += 1;
        }
    }
    for b in ["aaaaaaaaaaaaaa", "bbbbbbbbbbbbbb", "cccccccccccccc"] {
        assert!(
            builds.get(b).is_some_and(|n| *n > 0),
            "no job done by build {b}: {builds:?}"
        );
    }
    builds
}
