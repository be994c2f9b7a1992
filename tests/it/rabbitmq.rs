//! The RabbitMQ pool (`examples/rabbitmq_worker.rs`) against a real node
//! (`servers::RabbitMq`, one per test: it takes seconds to boot): the same
//! chaos as the Beanstalkd and Redis pools (queues.rs), a graceful stop
//! under load, dead-lettering and requeueing, the prefetch setting, and
//! the backlog the workers report.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lapin::{Channel, Connection, ConnectionProperties};

use crate::queues::{
    chaos, check_exactly_once_but_for, done_ids, read_results, run_example, workers_section, CHAOS_DEADLINE,
};
use crate::servers::RabbitMq;
use crate::util::*;

#[path = "../../examples/common/amqp_topology.rs"]
mod amqp_topology;

/// An AMQP channel of the test's own, to watch a queue from outside.
struct Watcher {
    runtime: tokio::runtime::Runtime,
    _connection: Connection,
    channel: Channel,
}

impl Watcher {
    fn connect(server: &RabbitMq) -> Watcher {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (connection, channel) = runtime.block_on(async {
            let connection = Connection::connect(&server.url(), ConnectionProperties::default())
                .await
                .expect("connect to rabbitmq");
            let channel = connection.create_channel().await.expect("a channel");
            (connection, channel)
        });
        Watcher {
            runtime,
            _connection: connection,
            channel,
        }
    }

    /// The ready messages of `queue` (a passive declare).
    fn ready(&self, queue: &str) -> u64 {
        let n = self
            .runtime
            .block_on(amqp_topology::ready(&self.channel, queue))
            .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
        n.into()
    }
}

/// Publishes `n` jobs (payload ids from `first`) of `kind` to `queue`.
fn publish(server: &RabbitMq, queue: &str, n: u64, first: u64, kind: &str) {
    let (n, first, url) = (n.to_string(), first.to_string(), server.url());
    run_example(
        "rabbitmq_producer",
        &[
            "--url",
            &url,
            "--queue",
            queue,
            "--jobs",
            &n,
            "--first-id",
            &first,
            "--kind",
            kind,
        ],
    );
}

/// A rabbitmq_worker pool's `[workers]` and `[app]` text.
fn rabbit_config(server: &RabbitMq, queue: &str, results: &Path, workers: &str, app: &str) -> String {
    format!(
        "{workers}\n[app]\nurl = \"{}\"\nqueue = \"{queue}\"\nresults_dir = \"{}\"\n{app}\n",
        server.url(),
        results.display()
    )
}

/// A rabbitmq_worker daemon (not started) logging at `loglevel`, and its
/// results directory. At debug, lapin's trace events (a few dozen per
/// message) are logged too: the chaos pool logs at info.
fn rabbit_daemon(
    server: &RabbitMq,
    queue: &str,
    loglevel: &str,
    workers: &str,
    app: &str,
) -> (Daemon, PathBuf) {
    let exe = example("rabbitmq_worker");
    let d = Daemon::in_dir(
        TempDir::new("rabbitmq_worker"),
        exe,
        "rabbitmq_worker",
        loglevel,
        "",
    );
    let results = d.dir.path().join("results");
    d.rewrite_config(&rabbit_config(server, queue, &results, workers, app));
    (d, results)
}

/// The payload ids whose job a worker logged as started.
fn started(log: &str) -> HashSet<u64> {
    log.lines()
        .filter_map(|l| {
            l.rsplit_once("(payload ")?
                .1
                .strip_suffix(") started")?
                .parse()
                .ok()
        })
        .collect()
}

/// The chaos of queues.rs with 10,000 jobs rather than 20,000: a
/// restarted worker's AMQP handshake and topology declaration cost about
/// a dozen round trips, so this pool does about 1,000 jobs a second under
/// SIGKILL every 50 ms on the 2-core CI machine (20,000 jobs took 55 s
/// there, and over the 120 s deadline when the machine was loaded).
#[test]
fn rabbitmq_chaos_loses_no_job() {
    const JOBS: u64 = 10_000;
    let began = Instant::now();
    let server = RabbitMq::start();
    publish(&server, "chaos", JOBS, 0, "ok");
    let watcher = Watcher::connect(&server);
    assert_eq!(watcher.ready("chaos"), JOBS);
    // 2 ms of simulated work per job, as for Beanstalkd and Redis.
    let app = "job_time = \"2ms\"";
    let (d, results) = rabbit_daemon(&server, "chaos", "info", &workers_section(8), app);
    let parent = d.start();
    d.wait_workers(parent, 8);

    // The reload changes [app], so every worker is replaced.
    let reloaded = rabbit_config(
        &server,
        "chaos",
        &results,
        &workers_section(8),
        "job_time = \"2ms\"\nwait_timeout = \"2s\"",
    );
    let c = chaos(&d, parent, &reloaded, || watcher.ready("chaos"));

    // The messages held by killed workers were requeued when their
    // connections closed; the survivors finish everything, and nothing
    // stays ready or unacknowledged.
    let mut last = None;
    let finished = wait_until(CHAOS_DEADLINE.saturating_sub(began.elapsed()), || {
        done_ids(&read_results(&[&results])).len() as u64 == JOBS && {
            last = server.queue_counts("chaos");
            last == Some((0, 0))
        }
    });
    assert!(
        finished,
        "not finished: (ready, unacked) = {last:?}, {} done\n{}",
        done_ids(&read_results(&[&results])).len(),
        d.log()
    );
    assert!(alive(parent) && d.pid() == Some(parent), "the parent changed");
    d.wait_workers(parent, 8);
    let dups = check_exactly_once_but_for(&read_results(&[&results]), JOBS, &c.killed);
    assert!(dups <= c.kills, "{dups} duplicates for {} kills", c.kills);
    let log = d.log();
    assert!(log.contains("reload: configuration reloaded"), "{log}");
    assert_eq!(
        server.queue_counts("chaos.dead"),
        Some((0, 0)),
        "nothing dead-lettered"
    );
    assert!(d.run(&["stop"]).status.success());
    assert_eq!(server.queue_counts("chaos"), Some((0, 0)));
    eprintln!(
        "rabbitmq chaos: {JOBS} jobs, {} kills, {dups} duplicates, {:.1}s",
        c.kills,
        began.elapsed().as_secs_f64()
    );
}

#[test]
fn rabbitmq_graceful_stop_finishes_every_delivery_in_hand() {
    const JOBS: u64 = 40;
    let server = RabbitMq::start();
    publish(&server, "slow", JOBS, 0, "ok");
    let (d, results) = rabbit_daemon(
        &server,
        "slow",
        "debug",
        &workers_section(4),
        "job_time = \"300ms\"",
    );
    let parent = d.start();
    let workers = d.wait_workers(parent, 4);
    // Every worker mid-job: with prefetch 1, 4 deliveries unacknowledged.
    assert!(
        wait_until(DEADLINE, || matches!(server.queue_counts("slow"), Some((_, 4)))),
        "workers not all busy: {:?}",
        server.queue_counts("slow")
    );
    let stopping = Instant::now();
    kill(parent, 15);
    assert!(wait_until(DEADLINE, || !alive(parent)), "parent still alive");
    let took = stopping.elapsed();
    assert!(workers.iter().all(|w| !alive(*w)), "a worker outlived the parent");

    let (ready, unacked) = server.queue_counts("slow").expect("the queue");
    assert_eq!(unacked, 0, "a delivery was left unacknowledged");
    let records = read_results(&[&results]);
    let done = done_ids(&records);
    assert_eq!(records.len(), done.len(), "a job was done twice: {records:?}");
    // A job recorded but not acknowledged would be back in the queue and
    // counted twice here.
    assert_eq!(done.len() as u64 + ready, JOBS, "done + ready != published");
    let log = d.log();
    let started = started(&log);
    assert!(started.len() >= 4, "{log}");
    let abandoned: Vec<_> = started.difference(&done).collect();
    assert!(
        abandoned.is_empty(),
        "started but not finished: {abandoned:?}\n{log}"
    );
    assert_eq!(
        log.matches("exited after stop request: exit status 0").count(),
        4,
        "{log}"
    );
    assert!(!log.contains("SIGKILL") && !log.contains("SIGALRM"), "{log}");
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
}

#[test]
fn rabbitmq_poison_is_dead_lettered_and_flaky_is_requeued() {
    let server = RabbitMq::start();
    publish(&server, "mixed", 5, 0, "ok");
    publish(&server, "mixed", 2, 100, "poison");
    publish(&server, "mixed", 2, 200, "flaky");
    let (d, results) = rabbit_daemon(&server, "mixed", "debug", &workers_section(2), "");
    d.start();
    let want: HashSet<u64> = [0, 1, 2, 3, 4, 200, 201].into();
    let mut queues = Default::default();
    assert!(
        wait_until(DEADLINE, || {
            done_ids(&read_results(&[&results])) == want && {
                queues = server.all_queue_counts();
                queues.get("mixed") == Some(&(0, 0)) && queues.get("mixed.dead") == Some(&(2, 0))
            }
        }),
        "done {:?}, queues (ready, unacked) {queues:?}\n{}",
        done_ids(&read_results(&[&results])),
        d.log()
    );
    let log = d.log();
    assert_eq!(
        log.matches(": permanent error; rejecting it to mixed.dead")
            .count(),
        2,
        "{log}"
    );
    assert_eq!(log.matches(": transient error; requeued").count(), 2, "{log}");
    assert!(d.run(&["stop"]).status.success());
}

/// `prefetch = 3`: a worker holds three deliveries (one in hand, two sent
/// ahead); a graceful stop finishes the one in hand and gives the other two
/// back undone. Then a pool in `mode = "backlog"`, sized on the ready
/// messages the workers report, grows from 1 worker to `max`.
#[test]
fn rabbitmq_prefetch_and_backlog() {
    const JOBS: u64 = 60;
    let server = RabbitMq::start();
    publish(&server, "ahead", JOBS, 0, "ok");
    let (d, results) = rabbit_daemon(
        &server,
        "ahead",
        "debug",
        &workers_section(1),
        "prefetch = 3\njob_time = \"250ms\"",
    );
    let parent = d.start();
    let mut counts = None;
    assert!(
        wait_until(DEADLINE, || {
            counts = server.queue_counts("ahead");
            matches!(counts, Some((_, 3)))
        }),
        "(ready, unacked) = {counts:?}\n{}",
        d.log()
    );
    kill(parent, 15);
    assert!(wait_until(DEADLINE, || !alive(parent)), "parent still alive");
    let (ready, unacked) = server.queue_counts("ahead").expect("the queue");
    assert_eq!(unacked, 0);
    let records = read_results(&[&results]);
    let done = done_ids(&records);
    assert_eq!(records.len(), done.len(), "a job was done twice");
    assert_eq!(done.len() as u64 + ready, JOBS, "done + ready != published");
    let started = started(&d.log());
    let abandoned: Vec<_> = started.difference(&done).collect();
    assert!(abandoned.is_empty(), "started but not finished: {abandoned:?}");
    assert!(
        ready >= 2,
        "the two deliveries sent ahead are back: {ready} ready"
    );

    // The backlog: 200 slow jobs, 5 per worker, grow 1 worker to 3.
    publish(&server, "backlog", 200, 0, "ok");
    let workers = "[workers]\nmode = \"backlog\"\nmin = 1\nmax = 3\njobs_per_worker = 5\n\
                   scale_up_step = 1\nscale_down_cooldown = \"1m\"\ncheck_interval = \"200ms\"\n\
                   stop_timeout = \"10s\"\n";
    let (d, _) = rabbit_daemon(&server, "backlog", "info", workers, "job_time = \"100ms\"");
    let parent = d.start();
    assert!(
        wait_until(DEADLINE, || d.workers(parent).len() == 3),
        "{}",
        d.log()
    );
    let log = d.log();
    assert!(log.contains("growing from 1 to 2 workers"), "{log}");
    assert!(log.contains("growing from 2 to 3 workers"), "{log}");
    assert!(d.run(&["stop"]).status.success());
}

/// The chaos with two upgrades in the middle (issue 13), as
/// `upgrade::beanstalk_chaos_with_two_upgrades_loses_no_job` does for
/// Beanstalkd: the daemon runs from its own copy of the worker binary,
/// and each upgrade puts a rebuilt copy (another compiled-in build id) at
/// that path. A worker is SIGKILLed every 50 ms between the upgrades (not
/// during one: a killed worker is down until its restart, which no
/// upgrade can prevent). Every job has a result, the queue ends empty
/// (nothing ready, nothing unacknowledged), the results name all three
/// builds, the parent's pid stays, and every worker runs the last file.
#[test]
fn rabbitmq_chaos_with_two_upgrades_loses_no_job() {
    use crate::upgrade::{chaos_with_two_upgrades, exe_of, install_build_of, jobs_by_build, UpgradeChaos};
    const JOBS: u64 = 10_000;
    let began = Instant::now();
    let server = RabbitMq::start();
    publish(&server, "chaos", JOBS, 0, "ok");
    let watcher = Watcher::connect(&server);
    assert_eq!(watcher.ready("chaos"), JOBS);
    let app = "job_time = \"3ms\"";
    let (mut d, results) = rabbit_daemon(&server, "chaos", "info", &workers_section(8), app);
    let exe = d.dir.path().join("rabbitmq_worker");
    install_build_of("rabbitmq_worker", &exe, "aaaaaaaaaaaaaa");
    d.exe = exe;
    // The operator's commands run from a copy the upgrades do not replace.
    let ctl = d.dir.path().join("ctl");
    std::fs::copy(example("rabbitmq_worker"), &ctl).unwrap();
    let parent = d.start();
    d.wait_workers(parent, 8);

    let UpgradeChaos { killed, least, left } =
        chaos_with_two_upgrades(&d, parent, &ctl, "rabbitmq_worker", || watcher.ready("chaos"));

    let mut last = None;
    let finished = wait_until(CHAOS_DEADLINE.saturating_sub(began.elapsed()), || {
        done_ids(&read_results(&[&results])).len() as u64 == JOBS && {
            last = server.queue_counts("chaos");
            last == Some((0, 0))
        }
    });
    assert!(
        finished,
        "not finished: (ready, unacked) = {last:?}, {} done\n{}",
        done_ids(&read_results(&[&results])).len(),
        d.log()
    );
    assert!(least >= 8, "{least} ready workers seen during an upgrade");
    assert!(alive(parent) && d.pid() == Some(parent), "the parent changed");
    let workers = d.wait_workers(parent, 8);
    let path = d.exe.display().to_string();
    for w in &workers {
        assert_eq!(exe_of(*w), path, "worker {w} runs the last file");
    }
    let dups = check_exactly_once_but_for(&read_results(&[&results]), JOBS, &killed);
    assert!(
        dups <= killed.len(),
        "{dups} duplicates for {} kills",
        killed.len()
    );
    let builds = jobs_by_build(&results);
    assert_eq!(
        server.queue_counts("chaos.dead"),
        Some((0, 0)),
        "nothing dead-lettered"
    );
    assert!(d.run(&["stop"]).status.success());
    assert_eq!(server.queue_counts("chaos"), Some((0, 0)));
    eprintln!(
        "rabbitmq upgrade chaos: {JOBS} jobs, {} kills, {dups} duplicates, ready before the upgrades {left:?}, builds {builds:?}, {:.1}s",
        killed.len(),
        began.elapsed().as_secs_f64()
    );
}
