//! `rookery_queues::beanstalk::Client` against a real beanstalkd, one server per
//! test.

use std::time::{Duration, Instant};

use rookery_queues::beanstalk::{Client, Error, Job};

use crate::servers::Beanstalkd;

const SEC: Duration = Duration::from_secs(1);
const TTR: Duration = Duration::from_secs(60);

fn connect(server: &Beanstalkd, tube: &str) -> Client {
    let mut client = Client::connect(server.addr()).expect("connect");
    client
        .set_io_timeout(Some(Duration::from_secs(10)))
        .expect("set_io_timeout");
    client.use_tube(tube).expect("use");
    assert_eq!(client.watch(tube).expect("watch"), 2);
    assert_eq!(client.ignore("default").expect("ignore"), 1);
    client
}

/// Reserves until a job arrives or `limit` passes; `reserve_timeout`
/// returns `None` on `DEADLINE_SOON`, so callers loop like this.
fn reserve_within(client: &mut Client, limit: Duration) -> Option<Job> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(job) = client.reserve_timeout(SEC).expect("reserve") {
            return Some(job);
        }
    }
    None
}

fn state(client: &mut Client, id: u64) -> String {
    let stats = client.stats_job(id).expect("stats-job");
    stats.get("state").expect("state").to_string()
}

#[test]
fn put_reserve_delete_round_trip_binary_body() {
    let server = Beanstalkd::start();
    let mut client = connect(&server, "round-trip");
    let body = b"line one\r\nline two\r\n\0\xff\xfe end\r\n".to_vec();

    let id = client.put(&body, 100, Duration::ZERO, TTR).expect("put");
    let job = client.reserve_timeout(SEC).expect("reserve").expect("a job");
    assert_eq!(job, Job { id, body });

    let stats = client.stats_job(id).expect("stats-job");
    assert_eq!(stats.get("state"), Some("reserved"));
    assert_eq!(stats.get("tube"), Some("round-trip"));
    assert_eq!(stats.get_u64("pri"), Some(100));
    assert_eq!(stats.get_u64("ttr"), Some(60));

    client.delete(id).expect("delete");
    let again = client.delete(id).unwrap_err();
    assert!(
        matches!(
            again,
            Error::NotFound {
                command: "delete",
                ..
            }
        ),
        "{again}"
    );
    // A NOT_FOUND leaves the connection usable.
    assert!(matches!(client.stats_job(id), Err(Error::NotFound { .. })));
    let empty = client
        .put(b"", 0, Duration::ZERO, Duration::ZERO)
        .expect("put empty");
    let job = client.reserve_timeout(SEC).expect("reserve").expect("a job");
    assert_eq!(
        job,
        Job {
            id: empty,
            body: Vec::new()
        }
    );
    assert_eq!(
        client.stats_job(empty).unwrap().get_u64("ttr"),
        Some(1),
        "ttr is at least 1s"
    );
}

#[test]
fn reserve_timeout_on_empty_tube_returns_none() {
    let server = Beanstalkd::start();
    let mut client = connect(&server, "empty");
    assert_eq!(client.reserve_timeout(Duration::ZERO).expect("poll"), None);
    let started = Instant::now();
    assert_eq!(client.reserve_timeout(SEC).expect("wait"), None);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "returned after {:?}",
        started.elapsed()
    );
}

#[test]
fn release_with_delay_comes_back_later() {
    let server = Beanstalkd::start();
    let mut client = connect(&server, "release");
    let id = client.put(b"retry me", 10, Duration::ZERO, TTR).expect("put");
    let job = client.reserve_timeout(SEC).expect("reserve").expect("a job");
    assert_eq!(job.id, id);

    client.release(id, 20, SEC).expect("release");
    let stats = client.stats_job(id).expect("stats-job");
    assert_eq!(stats.get("state"), Some("delayed"));
    assert_eq!(stats.get_u64("pri"), Some(20));
    assert_eq!(stats.get_u64("releases"), Some(1));
    assert_eq!(
        client.reserve_timeout(Duration::ZERO).expect("poll"),
        None,
        "delayed job reserved early"
    );

    let job = reserve_within(&mut client, Duration::from_secs(5)).expect("job back after its delay");
    assert_eq!(job.id, id);
    assert_eq!(state(&mut client, id), "reserved");
    // Releasing a job this connection does not hold is NOT_FOUND.
    client.release(id, 0, Duration::ZERO).expect("release");
    assert!(matches!(
        client.release(id, 0, Duration::ZERO),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn bury_then_kick() {
    let server = Beanstalkd::start();
    let mut client = connect(&server, "bury");
    let id = client.put(b"poison", 0, Duration::ZERO, TTR).expect("put");
    client.reserve_timeout(SEC).expect("reserve").expect("a job");

    client.bury(id, 7).expect("bury");
    assert_eq!(state(&mut client, id), "buried");
    assert_eq!(client.stats_job(id).unwrap().get_u64("pri"), Some(7));
    assert_eq!(
        client.stats_tube("bury").unwrap().get_u64("current-jobs-buried"),
        Some(1)
    );
    assert_eq!(
        client.reserve_timeout(Duration::ZERO).expect("poll"),
        None,
        "buried job reserved"
    );
    assert!(matches!(
        client.bury(id, 0),
        Err(Error::NotFound { command: "bury", .. })
    ));

    assert_eq!(client.kick(10).expect("kick"), 1);
    assert_eq!(state(&mut client, id), "ready");
    assert_eq!(client.kick(10).expect("kick"), 0);
    let job = client.reserve_timeout(SEC).expect("reserve").expect("kicked job");
    assert_eq!(job.id, id);
    assert_eq!(job.body, b"poison");
}

#[test]
fn stats_tube_counts_jobs_by_state() {
    let server = Beanstalkd::start();
    let mut client = connect(&server, "counts");
    client.put(b"a", 0, Duration::ZERO, TTR).expect("put");
    client.put(b"b", 0, Duration::ZERO, TTR).expect("put");
    client.put(b"c", 0, Duration::from_secs(60), TTR).expect("put");

    let stats = client.stats_tube("counts").expect("stats-tube");
    assert_eq!(stats.get("name"), Some("counts"));
    assert_eq!(stats.get_u64("current-jobs-ready"), Some(2));
    assert_eq!(stats.get_u64("current-jobs-delayed"), Some(1));
    assert_eq!(stats.get_u64("current-jobs-reserved"), Some(0));
    assert_eq!(stats.get_u64("total-jobs"), Some(3));
    assert_eq!(stats.get_u64("current-watching"), Some(1));

    client.reserve_timeout(SEC).expect("reserve").expect("a job");
    let stats = client.stats_tube("counts").expect("stats-tube");
    assert_eq!(stats.get_u64("current-jobs-ready"), Some(1));
    assert_eq!(stats.get_u64("current-jobs-reserved"), Some(1));

    let server_stats = client.stats().expect("stats");
    assert_eq!(server_stats.get_u64("current-jobs-reserved"), Some(1));
    assert!(server_stats.get("version").is_some());
    let missing = client.stats_tube("no-such-tube").unwrap_err();
    assert!(
        matches!(
            missing,
            Error::NotFound {
                command: "stats-tube",
                ..
            }
        ),
        "{missing}"
    );
}

#[test]
fn job_whose_ttr_expires_comes_back() {
    let server = Beanstalkd::start();
    let mut client = connect(&server, "ttr");
    let id = client.put(b"slow", 0, Duration::ZERO, SEC).expect("put");
    let job = client.reserve_timeout(SEC).expect("reserve").expect("a job");
    assert_eq!(job.id, id);
    // Not deleted: within a second of the TTR the server answers
    // DEADLINE_SOON (None), then the job times out and is reserved again.
    let again = reserve_within(&mut client, Duration::from_secs(3)).expect("job back after its TTR");
    assert_eq!(again.id, id);
    assert_eq!(client.stats_job(id).unwrap().get_u64("timeouts"), Some(1));
}

#[test]
fn touch_and_closed_connection_releases_jobs() {
    let server = Beanstalkd::start();
    let mut worker = connect(&server, "touch");
    let id = worker.put(b"held", 0, Duration::ZERO, TTR).expect("put");
    worker.reserve_timeout(SEC).expect("reserve").expect("a job");
    worker.touch(id).expect("touch");
    assert!(matches!(
        worker.touch(id + 1000),
        Err(Error::NotFound { command: "touch", .. })
    ));

    // A worker that dies gives its reserved jobs back at once.
    drop(worker);
    let mut other = connect(&server, "touch");
    let job = other
        .reserve_timeout(Duration::from_secs(3))
        .expect("reserve")
        .expect("job back");
    assert_eq!(job.id, id);
}

#[test]
fn too_big_job_is_refused_and_connection_stays_usable() {
    let server = Beanstalkd::start();
    let mut client = connect(&server, "big");
    let big = vec![b'x'; 70_000]; // default max-job-size is 65535
    let err = client.put(&big, 0, Duration::ZERO, TTR).unwrap_err();
    assert!(matches!(err, Error::JobTooBig { size: 70_000 }), "{err}");
    let id = client
        .put(b"small", 0, Duration::ZERO, TTR)
        .expect("put after JOB_TOO_BIG");
    assert_eq!(client.reserve_timeout(SEC).unwrap().unwrap().id, id);
}

#[test]
fn io_timeout_breaks_the_connection() {
    let server = Beanstalkd::start();
    let mut client = connect(&server, "timeout");
    client
        .set_io_timeout(Some(Duration::from_millis(100)))
        .expect("set_io_timeout");
    let err = client.reserve_timeout(Duration::from_secs(2)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Io {
                command: "reserve",
                ..
            }
        ),
        "{err}"
    );
    let err = client.stats().unwrap_err();
    assert!(matches!(err, Error::Broken { command: "stats" }), "{err}");
}

#[test]
fn invalid_tube_names_are_refused_before_sending() {
    let server = Beanstalkd::start();
    let mut client = connect(&server, "names");
    for bad in ["", "-dash", "two words", "x\r\nput 0 0 1 1"] {
        let err = client.use_tube(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidTube(_)), "{bad:?}: {err}");
    }
    assert!(matches!(client.ignore("names"), Err(Error::NotIgnored { .. })));
    client.use_tube("names").expect("connection still usable");
}
