//! `pause` / `resume` (issue 11) on real processes: a real beanstalkd
//! whose queue must not move while the pool is paused, Rust workers that
//! wait without spinning and keep beating, a paused pool that stops at
//! once, a worker killed while paused that comes back paused, the parent's
//! signals (SIGTSTP / SIGCONT), and commands that really get their
//! `pause_signal` / `resume_signal`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rookery_queues::beanstalk::Client;
use serde_json::Value;

use crate::servers::Beanstalkd;
use crate::util::*;

/// `status --json`, parsed.
fn status(d: &Daemon) -> Value {
    let out = d.run(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The pids of the workers `status` shows as paused.
fn paused_workers(s: &Value) -> Vec<i64> {
    s["workers"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter(|w| w["paused"] == Value::Bool(true))
                .filter_map(|w| w["pid"].as_i64())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `args`, asserts success, returns stdout.
fn ok(d: &Daemon, args: &[&str]) -> String {
    let out = d.run(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed: {text}{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    text
}

/// Waits until `status` shows the pool paused with all `n` workers paused.
fn wait_all_paused(d: &Daemon, n: usize) -> Value {
    let mut last = Value::Null;
    let done = wait_until(DEADLINE, || {
        last = status(d);
        last["paused_for_secs"].is_number()
            && last["workers"].as_array().is_some_and(|w| w.len() == n)
            && paused_workers(&last).len() == n
    });
    assert!(done, "not all paused: {last}\nlog:\n{}", d.log());
    last
}

/// Ready and reserved jobs of a tube.
fn ready_reserved(addr: &str, tube: &str) -> (u64, u64) {
    let mut c = Client::connect(addr).expect("connect to beanstalkd");
    let s = c.stats_tube(tube).expect("stats-tube");
    let get = |k| s.get_u64(k).unwrap_or_else(|| panic!("no {k}"));
    (get("current-jobs-ready"), get("current-jobs-reserved"))
}

/// `put` `n` jobs with the example producer.
fn put(server: &Beanstalkd, tube: &str, n: u64) {
    let out = run_with_timeout(
        std::process::Command::new(example("beanstalk_producer")).args([
            "--addr",
            &server.addr(),
            "--tube",
            tube,
            "--jobs",
            &n.to_string(),
            "--ttr",
            "30s",
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Waits until `status` shows `n` running workers; their pids.
fn wait_running(d: &Daemon, n: usize) -> Vec<i32> {
    let mut last = Value::Null;
    let mut pids = Vec::new();
    let done = wait_until(DEADLINE, || {
        last = status(d);
        pids = last["workers"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter(|w| w["state"] == "running")
                    .filter_map(|w| w["pid"].as_i64())
                    .map(|p| p as i32)
                    .collect()
            })
            .unwrap_or_default();
        pids.len() == n
    });
    assert!(done, "not {n} running: {last}\nlog:\n{}", d.log());
    pids
}

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after "pid (comm) ".
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A loopback port nobody listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path`: (status code, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_string()))
}

#[test]
fn beanstalk_pause_holds_the_queue_still_and_resume_drains_it() {
    const JOBS: u64 = 300;
    let server = Beanstalkd::start();
    let addr = server.addr();
    put(&server, "held", JOBS);
    let port = free_port();
    let d = Daemon::with(example("beanstalk_worker"), "beanstalk_worker", "");
    let results = d.dir.path().join("results");
    // 40 ms per job: 4 workers take a few seconds for the lot, so the
    // pause lands mid-queue. heartbeat_timeout: a paused worker that
    // stopped beating would be replaced (its pid would change).
    d.rewrite_config(&format!(
        "[workers]\ncount = 4\nstop_timeout = \"20s\"\nheartbeat_timeout = \"1s\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [app]\nserver = \"{addr}\"\ntube = \"held\"\nresults_dir = \"{}\"\n\
         reserve_timeout = \"1s\"\njob_time = \"40ms\"\n",
        results.display()
    ));
    let parent = d.start();
    let workers = d.wait_workers(parent, 4);
    assert!(
        wait_until(DEADLINE, || ready_reserved(&addr, "held").0 < JOBS - 20),
        "the pool took no jobs"
    );

    let said = ok(&d, &["pause"]);
    assert!(said.contains("paused: 4 workers"), "{said}");
    let s = wait_all_paused(&d, 4);
    assert_eq!(s["running"], Value::Bool(true));
    let text = ok(&d, &["status"]);
    assert!(text.contains("paused for "), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains(" paused ")).count(),
        4,
        "each worker's row says paused:\n{text}"
    );
    let (code, why) = get(port, "/readyz").expect("readyz answers");
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("paused"), "{why}");
    let (_, metrics) = get(port, "/metrics").expect("metrics answer");
    assert!(
        metrics.contains("rookery_workers{state=\"paused\"} 4\n"),
        "{metrics}"
    );

    // The queue stands still: nothing reserved, the ready count constant,
    // for several seconds (a worker polling past the pause would move it).
    let (held, reserved) = ready_reserved(&addr, "held");
    assert_eq!(reserved, 0, "a paused worker holds a job");
    assert!(held > 0, "the queue ran out before the pause took effect");
    let ticks: BTreeMap<i32, u64> = workers.iter().map(|w| (*w, cpu_ticks(*w))).collect();
    let watch = Instant::now();
    let mut polls = 0;
    while watch.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            ready_reserved(&addr, "held"),
            (held, 0),
            "a job was taken while paused (after {:?})",
            watch.elapsed()
        );
        polls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(polls >= 10, "only {polls} polls");
    // Still the same processes (beating, so not taken for hung), asleep
    // rather than spinning: well under a tenth of the window in CPU.
    assert_eq!(
        d.workers(parent),
        workers,
        "a paused worker was replaced\n{}",
        d.log()
    );
    for (w, before) in &ticks {
        let used = cpu_ticks(*w) - before;
        assert!(used < 40, "worker {w} used {used} ticks while paused");
    }
    assert!(!d.log().contains("is hung"), "{}", d.log());

    let said = ok(&d, &["resume"]);
    assert!(said.contains("resumed after"), "{said}");
    assert!(
        wait_until(Duration::from_secs(60), || ready_reserved(&addr, "held")
            == (0, 0)),
        "not drained after resume: {:?}",
        ready_reserved(&addr, "held")
    );
    let s = status(&d);
    assert!(s["paused_for_secs"].is_null(), "{s}");
    assert!(paused_workers(&s).is_empty(), "{s}");
    assert!(wait_until(DEADLINE, || get(port, "/readyz").is_some_and(|(c, _)| c == 200)));
    ok(&d, &["stop"]);
}

#[test]
fn beanstalk_a_worker_killed_while_paused_comes_back_paused() {
    let server = Beanstalkd::start();
    let addr = server.addr();
    put(&server, "again", 50);
    let d = Daemon::with(example("beanstalk_worker"), "beanstalk_worker", "");
    let results = d.dir.path().join("results");
    d.rewrite_config(&format!(
        "[workers]\ncount = 2\nstop_timeout = \"20s\"\nbackoff_initial = \"10ms\"\n\n\
         [app]\nserver = \"{addr}\"\ntube = \"again\"\nresults_dir = \"{}\"\n\
         reserve_timeout = \"1s\"\njob_time = \"200ms\"\n",
        results.display()
    ));
    let parent = d.start();
    let workers = d.wait_workers(parent, 2);
    ok(&d, &["pause"]);
    wait_all_paused(&d, 2);
    let held = ready_reserved(&addr, "again");
    assert_eq!(held.1, 0);
    kill(workers[0], 9);
    let mut now = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            now = d.workers(parent);
            now.len() == 2 && !now.contains(&workers[0])
        }),
        "not replaced: {now:?}"
    );
    let s = wait_all_paused(&d, 2);
    let fresh = now.iter().find(|p| **p != workers[1]).copied().unwrap();
    assert!(paused_workers(&s).contains(&i64::from(fresh)), "{s}");
    // A worker added while paused starts paused too.
    ok(&d, &["scale", "+1"]);
    wait_all_paused(&d, 3);
    // It took no job on its way up: the queue is where the pause left it.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        assert_eq!(ready_reserved(&addr, "again"), held, "the new worker took a job");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&d, &["resume"]);
    assert!(wait_until(Duration::from_secs(60), || ready_reserved(
        &addr, "again"
    ) == (0, 0)));
    ok(&d, &["stop"]);
}

#[test]
fn a_paused_pool_stops_at_once() {
    let d = Daemon::demo("[workers]\ncount = 3\nstop_timeout = \"30s\"\n");
    let parent = d.start();
    let workers = d.wait_workers(parent, 3);
    ok(&d, &["pause"]);
    wait_all_paused(&d, 3);
    for w in &workers {
        let title = cmdline(*w);
        assert!(title.ends_with(" paused"), "ps shows it paused: {title:?}");
    }
    let t = Instant::now();
    ok(&d, &["stop"]);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stop took {took:?} (stop_timeout 30s)"
    );
    assert!(workers.iter().all(|w| !alive(*w)));
    let log = d.log();
    assert!(!log.contains("SIGKILL"), "{log}");
    assert_eq!(
        log.matches("exited after stop request: exit status 0").count(),
        3,
        "{log}"
    );
}

#[test]
fn sigtstp_pauses_and_sigcont_resumes_the_parent_s_pool() {
    let d = Daemon::demo("[workers]\ncount = 2\n[app]\njob_interval = \"50ms\"\njob_time = \"10ms\"\n");
    let parent = d.start();
    d.wait_workers(parent, 2);
    kill(parent, libc::SIGTSTP);
    wait_all_paused(&d, 2);
    assert!(
        alive(parent) && proc_state(parent) != Some('T'),
        "the parent must not stop"
    );
    assert!(d.wait_log("received SIGTSTP: paused: 2 workers"), "{}", d.log());
    let jobs = |s: &Value| s["totals"]["jobs"].as_u64().unwrap_or(0);
    let before = jobs(&status(&d));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(jobs(&status(&d)), before, "jobs were done while paused");
    kill(parent, libc::SIGCONT);
    assert!(d.wait_log("received SIGCONT: resumed after"), "{}", d.log());
    assert!(
        wait_until(DEADLINE, || jobs(&status(&d)) > before + 2),
        "no jobs after SIGCONT"
    );
    assert!(paused_workers(&status(&d)).is_empty());
    ok(&d, &["stop"]);
}

#[test]
fn commands_get_pause_signal_and_resume_signal() {
    let d = Daemon::rookery("");
    let got = d.dir.path().join("signals");
    let script = d.dir.path().join("w.sh");
    std::fs::write(
        &script,
        "trap 'echo \"paused $$\" >> \"$SIGNALS\"; echo paused >&3' TSTP\n\
         trap 'echo \"resumed $$\" >> \"$SIGNALS\"' CONT\n\
         echo ready >&3\n\
         while :; do sleep 0.2 & wait $!; done\n",
    )
    .unwrap();
    d.rewrite_config(&format!(
        "[workers]\ncount = 2\nready = \"notify\"\nbackoff_initial = \"10ms\"\n\
         pause_signal = \"TSTP\"\nresume_signal = \"CONT\"\n\
         command = [\"sh\", \"{}\"]\nenv = {{ SIGNALS = \"{}\" }}\n",
        script.display(),
        got.display()
    ));
    let parent = d.start();
    let workers = wait_running(&d, 2);
    let lines = || std::fs::read_to_string(&got).unwrap_or_default();
    let said = ok(&d, &["pause"]);
    assert!(said.contains("sent SIGTSTP"), "{said}");
    assert!(
        wait_until(DEADLINE, || workers
            .iter()
            .all(|w| lines().contains(&format!("paused {w}\n")))),
        "not every command got TSTP: {:?}",
        lines()
    );
    let s = wait_all_paused(&d, 2);
    assert!(s["paused_for_secs"].is_number());
    // They said `paused` on their notify descriptor.
    let activities = |s: &Value| -> Vec<String> {
        s["workers"]
            .as_array()
            .map(|w| {
                w.iter()
                    .map(|w| w["activity"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_until(DEADLINE, || activities(&status(&d)) == ["paused", "paused"]),
        "{:?}",
        activities(&status(&d))
    );
    // Killed while paused: the new command is told once it is ready.
    let _ = std::process::Command::new("kill")
        .args(["-9", "--", &format!("-{}", workers[0])])
        .status();
    let mut fresh = 0;
    assert!(wait_until(DEADLINE, || {
        fresh = d
            .workers(parent)
            .into_iter()
            .find(|p| !workers.contains(p))
            .unwrap_or(0);
        fresh != 0 && lines().contains(&format!("paused {fresh}\n"))
    }));
    assert!(!lines().contains("resumed"), "{}", lines());
    let said = ok(&d, &["resume"]);
    assert!(said.contains("resumed after"), "{said}");
    let s = status(&d);
    assert!(
        !activities(&s).iter().any(|a| a == "paused") && paused_workers(&s).is_empty(),
        "resumed commands are no longer shown paused: {s}"
    );
    for w in [workers[1], fresh] {
        assert!(
            wait_until(DEADLINE, || lines().contains(&format!("resumed {w}\n"))),
            "{w} not resumed: {}",
            lines()
        );
    }
    ok(&d, &["stop"]);
}

#[test]
fn commands_without_pause_signal_are_only_marked_paused() {
    let d = Daemon::rookery("[workers]\ncount = 1\ncommand = [\"sleep\", \"300\"]\n");
    d.start();
    let w = wait_running(&d, 1)[0];
    let said = ok(&d, &["pause"]);
    assert!(said.contains("not signalled (no workers.pause_signal)"), "{said}");
    let s = status(&d);
    assert!(s["paused_for_secs"].is_number(), "{s}");
    assert!(paused_workers(&s).is_empty(), "{s}");
    assert_eq!(proc_state(w), Some('S'), "the command runs on");
    ok(&d, &["resume"]);
    ok(&d, &["stop"]);
}

/// Review: any process of the daemon's session may send it SIGCONT (the one
/// exception kill(2) makes to its permission check), its workers included:
/// a worker running as `nobody` must not resume a paused pool. Root still
/// may.
#[test]
fn a_worker_of_another_account_cannot_resume_the_pool_with_sigcont() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: nothing to check");
        return;
    }
    let d = Daemon::rookery(
        "user = \"nobody\"\n\n[workers]\ncount = 1\n\
         command = [\"sh\", \"-c\", \"while :; do kill -CONT $PPID; sleep 0.2; done\"]\n",
    );
    let parent = d.start();
    assert!(wait_until(DEADLINE, || d.workers(parent).len() == 1));
    ok(&d, &["pause"]);
    assert!(d.wait_log("ignoring SIGCONT from pid"), "{}", d.log());
    let s = status(&d);
    assert!(s["paused_for_secs"].is_number(), "{s}\n{}", d.log());
    assert!(!d.log().contains("received SIGCONT"), "{}", d.log());
    kill(parent, libc::SIGCONT);
    assert!(
        wait_until(DEADLINE, || status(&d)["paused_for_secs"].is_null()),
        "root's SIGCONT resumes\n{}",
        d.log()
    );
}
