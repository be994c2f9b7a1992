//! Async workers (the `tokio` feature) on real processes: the runtime is
//! built in each worker and never in the parent, jobs run concurrently on
//! tasks are counted once each and keep the worker busy, a failed job does
//! not end the worker, a graceful stop waits for the jobs in hand, and a
//! parent that already runs threads (`#[tokio::main]`) is refused with a
//! hint. The fixture is `examples/async_testworker.rs`; the Redis example
//! is tested in `queues.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use crate::health::{status_json, status_workers};
use crate::util::*;

fn async_testworker(extra: &str) -> Daemon {
    Daemon::with(example("async_testworker"), "async_testworker", extra)
}

/// Threads of a process (`/proc/PID/task`).
fn threads(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// What each worker process recorded: pid -> (begun, ended) job ids.
type Records = BTreeMap<i32, (BTreeSet<u64>, BTreeSet<u64>)>;

fn records(dir: &Path) -> Records {
    let mut out = Records::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_suffix(".log").and_then(|p| p.parse().ok()) else {
            continue;
        };
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        let (begun, ended) = out.entry(pid).or_default();
        for line in text.lines() {
            let (what, id) = line.split_once(' ').expect("`what id`");
            let id: u64 = id.parse().expect("job id");
            match what {
                "begin" => assert!(begun.insert(id), "job {id} begun twice in {pid}"),
                "done" | "failed" => assert!(ended.insert(id), "job {id} ended twice in {pid}"),
                "tick" => {}
                other => panic!("unexpected record {other:?}"),
            }
        }
    }
    out
}

/// The job count a worker's scoreboard held at cleanup (its log line).
fn counted_at_cleanup(log: &str, pid: i32) -> Option<u64> {
    log.lines()
        .filter(|l| l.contains(&format!("[{pid}] ")))
        .find_map(|l| {
            l.split_once("cleanup: scoreboard ")?
                .1
                .strip_suffix(" jobs")?
                .parse()
                .ok()
        })
}

#[test]
fn concurrent_jobs_are_counted_once_keep_the_worker_busy_and_finish_on_stop() {
    let d = async_testworker("");
    let results = d.dir.path().join("results");
    d.rewrite_config(&format!(
        "[workers]\ncount = 2\nstop_timeout = \"20s\"\n\n[app]\nconcurrency = 3\njob_time = \"400ms\"\nfail_every = 4\nresults_dir = \"{}\"\n",
        results.display()
    ));
    let parent = d.start();
    let workers = d.wait_workers(parent, 2);
    // Busy while jobs are in hand, with jobs counted, seen from outside.
    let mut last = serde_json::Value::Null;
    let seen = wait_until(DEADLINE, || {
        last = status_json(&d);
        let w = status_workers(&last);
        w.len() == 2
            && w.iter()
                .all(|w| w["activity"] == "busy" && w["jobs"].as_u64().unwrap_or(0) >= 6)
    });
    assert!(seen, "workers busy with jobs counted: {last}\nlog:\n{}", d.log());
    // A failed job is logged at warning with its error; the worker carries on.
    assert!(d.wait_log("WARN"), "{}", d.log());
    assert!(
        d.log().contains("job failed: job 4: failed on purpose"),
        "{}",
        d.log()
    );
    assert!(
        status_workers(&status_json(&d))
            .iter()
            .all(|w| w["restarts"] == 0 && workers.contains(&(w["pid"].as_i64().unwrap() as i32))),
        "a failed job restarted a worker:\n{}",
        d.log()
    );
    // The runtime is the worker's (current-thread by default); the parent
    // has none.
    assert_eq!(threads(parent), 1, "the parent started a thread");
    for w in &workers {
        assert_eq!(threads(*w), 1, "worker {w}: a current-thread runtime");
    }
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    for w in &workers {
        assert!(wait_until(DEADLINE, || !alive(*w)), "worker {w} still alive");
    }
    let log = d.log();
    assert!(log.contains("stopping: waiting for"), "{log}");
    let recs = records(&results);
    assert_eq!(recs.len(), 2, "{recs:?}");
    for (pid, (begun, ended)) in &recs {
        // Every job begun was finished by the graceful stop...
        assert_eq!(begun, ended, "worker {pid}: jobs in hand were dropped\n{log}");
        // ... and the scoreboard counted each exactly once.
        assert_eq!(
            counted_at_cleanup(&log, *pid),
            Some(ended.len() as u64),
            "worker {pid}\n{log}"
        );
    }
}

#[test]
fn a_multi_thread_runtime_is_built_in_each_worker_and_a_failed_step_carries_on() {
    let d = async_testworker("");
    let results = d.dir.path().join("results");
    d.rewrite_config(&format!(
        "[workers]\ncount = 1\n\n[app]\nthreads = 2\nconcurrency = 0\njob_time = \"20ms\"\nfail_every = 3\nresults_dir = \"{}\"\n",
        results.display()
    ));
    let parent = d.start();
    let worker = d.wait_workers(parent, 1)[0];
    // Three failed jobs (Step::Failed), each logged, by the same worker.
    assert!(d.wait_log_count("job failed: job", 3), "{}", d.log());
    assert!(
        d.log().contains("job failed: job 9: failed on purpose"),
        "{}",
        d.log()
    );
    assert_eq!(d.workers(parent), vec![worker], "a failed job ended the worker");
    // Its runtime has the main thread and 2 workers; the parent has 1.
    assert!(threads(worker) >= 3, "worker threads: {}", threads(worker));
    assert_eq!(threads(parent), 1, "the parent started a thread");
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    assert!(wait_until(DEADLINE, || !alive(worker)));
    let recs = records(&results);
    let (begun, ended) = &recs[&worker];
    assert_eq!(begun, ended, "the job in hand was dropped");
    assert_eq!(
        counted_at_cleanup(&d.log(), worker),
        Some(ended.len() as u64),
        "{}",
        d.log()
    );
}

#[test]
fn a_graceful_stop_finishes_the_job_in_hand_of_run() {
    let d = async_testworker("");
    let results = d.dir.path().join("results");
    d.rewrite_config(&format!(
        "[workers]\ncount = 1\nstop_timeout = \"20s\"\n\n[app]\nconcurrency = 0\njob_time = \"1500ms\"\nresults_dir = \"{}\"\n",
        results.display()
    ));
    let parent = d.start();
    let worker = d.wait_workers(parent, 1)[0];
    assert!(
        wait_until(DEADLINE, || records(&results)
            .get(&worker)
            .is_some_and(|r| !r.0.is_empty())),
        "no job begun\n{}",
        d.log()
    );
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    assert!(wait_until(DEADLINE, || !alive(worker)));
    let (begun, ended) = records(&results).remove(&worker).unwrap();
    assert_eq!(begun, ended, "the job in hand was dropped\n{}", d.log());
    assert!(!ended.is_empty());
}

#[test]
fn a_parent_started_under_tokio_main_is_refused_with_what_to_do() {
    let d = async_testworker("[workers]\ncount = 1\n");
    for args in [&["start"][..], &["--no-daemon"][..]] {
        let out = run_with_timeout(
            d.cmd(args).env("ASYNC_TESTWORKER_TOKIO_MAIN", "1"),
            std::time::Duration::from_secs(60),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(70), "{args:?}: {out:?}");
        assert!(err.contains("#[tokio::main]"), "{args:?}: {err}");
        assert!(err.contains("rookery::run"), "{args:?}: {err}");
        assert!(err.contains("plain `fn main`"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(d.pid().is_none(), "{args:?}: a pidfile was written");
    }
}

/// The lines of a worker's record that start with `what`.
fn count(dir: &Path, pid: i32, what: &str) -> usize {
    fs::read_to_string(dir.join(format!("{pid}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(what))
        .count()
}

#[test]
fn a_paused_async_worker_finishes_its_jobs_in_hand_and_its_tasks_see_the_pause() {
    let d = async_testworker("");
    let results = d.dir.path().join("results");
    d.rewrite_config(&format!(
        "[workers]\ncount = 1\n\n[app]\nconcurrency = 3\njob_time = \"500ms\"\njob_time_step = \"1s\"\nticker = \"50ms\"\nresults_dir = \"{}\"\n",
        results.display()
    ));
    let parent = d.start();
    let worker = d.wait_workers(parent, 1)[0];
    assert!(
        wait_until(DEADLINE, || records(&results)
            .get(&worker)
            .is_some_and(|r| r.0.len() >= 3)),
        "no jobs in hand\n{}",
        d.log()
    );
    let out = d.run(&["pause"]);
    assert!(out.status.success(), "{out:?}");
    // The jobs in hand (ending at different times: the loop waits for the
    // resume while some are still running) run to their end while paused
    // (the runtime keeps running), and no new job begins.
    let finished = wait_until(DEADLINE, || {
        let r = records(&results);
        let (begun, ended) = &r[&worker];
        begun == ended
    });
    assert!(
        finished,
        "jobs in hand did not finish while paused: {:?}\n{}",
        records(&results),
        d.log()
    );
    let begun = records(&results)[&worker].0.len();
    // The ticking task sees the pause (StopHandle::paused) and waits
    // (StopHandle::resumed): its count stands still.
    let ticks = count(&results, worker, "tick");
    let mut still = 0;
    let steady = wait_until(DEADLINE, || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = count(&results, worker, "tick");
        if now == ticks {
            still += 1;
        } else {
            still = 0;
        }
        still >= 3
    });
    assert!(steady, "the task kept ticking while paused");
    assert_eq!(count(&results, worker, "tick"), ticks);
    assert_eq!(
        records(&results)[&worker].0.len(),
        begun,
        "a job began while paused"
    );
    let status = status_json(&d);
    assert_eq!(status_workers(&status)[0]["activity"], "paused", "{status}");
    // Resumed: the task ticks and jobs begin again.
    let out = d.run(&["resume"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(DEADLINE, || count(&results, worker, "tick") > ticks + 2
            && records(&results)[&worker].0.len() > begun),
        "not resumed\n{}",
        d.log()
    );
    assert_eq!(d.workers(parent), vec![worker]);
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn a_job_whose_task_panicked_ends_uncounted_and_the_worker_goes_on() {
    let d = async_testworker("");
    let results = d.dir.path().join("results");
    // A stop that waited for the panicked jobs would outlast DEADLINE.
    d.rewrite_config(&format!(
        "[workers]\ncount = 1\nstop_timeout = \"120s\"\n\n[app]\nconcurrency = 2\njob_time = \"50ms\"\npanic_every = 3\nresults_dir = \"{}\"\n",
        results.display()
    ));
    let parent = d.start();
    let worker = d.wait_workers(parent, 1)[0];
    assert!(
        d.wait_log_count("a job ended without done or failed", 3),
        "{}",
        d.log()
    );
    assert_eq!(
        d.workers(parent),
        vec![worker],
        "a panicked task ended the worker"
    );
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    assert!(
        wait_until(DEADLINE, || !alive(worker)),
        "the stop waited for panicked jobs"
    );
    let (begun, ended) = records(&results).remove(&worker).unwrap();
    assert_eq!(begun, ended);
    let panicked = ended.iter().filter(|id| *id % 3 == 0).count();
    assert!(panicked >= 3);
    assert_eq!(
        counted_at_cleanup(&d.log(), worker),
        Some((ended.len() - panicked) as u64),
        "{}",
        d.log()
    );
}
